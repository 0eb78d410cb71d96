from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.campaign import load_campaign
from orchestrator.errors import SpecError
from orchestrator.spec import GiB, MiB, format_size, load_testbed, parse_size
from orchestrator.testbed import plan
from tests.conftest import DATA, EXAMPLES

BAD = sorted((DATA / "bad-testbeds").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first.removeprefix("# expect: ")


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_testbed_is_refused_with_its_key(path: Path, ddc_home: Path) -> None:
    with pytest.raises(SpecError) as err:
        plan(path)  # plan: the spec and the host check, as `validate` and `up` run them
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert expected(path) in message
    assert "\n" not in err.value.message, "one line per error"
    assert not (ddc_home / "home").exists(), "validation must create nothing"


def test_example_rack() -> None:
    spec = load_testbed(EXAMPLES / "rack.yaml")
    assert spec.name == "rack0"
    assert [cb.name for cb in spec.compute_blades] == ["cb0", "cb1"]
    assert spec.memory_blades[0].size == 4 * GiB
    assert spec.memory_blades[0].bandwidth_gbps == 16
    assert spec.compute_blades[1].remote[0].size == GiB
    assert spec.total_memory() == 6 * GiB


@pytest.mark.parametrize("text,size", [("512M", 512 * MiB), ("4G", 4 * GiB), ("1T", 1024 * GiB),
                                        ("2048K", 2 * MiB), ("1.5G", 1536 * MiB), ("4GiB", 4 * GiB),
                                        (4 * GiB, 4 * GiB)])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("size,text", [(4 * GiB, "4G"), (1536 * MiB, "1536M"), (2 * MiB, "2M")])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


# -- checks a new user hit (issue 15) --------------------------------------------------------------

RACK = """\
name: rack0
image: {image}
local_latency_ns: {local}
memory_blades:
  - {{name: mb0, size: 2G, latency_ns: {remote}}}
compute_blades:
  - {{name: cb0, vcpus: 1, memory: 1G, remote: [{{blade: mb0, size: 1G}}]}}
"""


def rack_file(tmp_path: Path, image: str = "debian-bookworm", local: int = 100, remote: int = 250) -> Path:
    path = tmp_path / "rack.yaml"
    path.write_text(RACK.format(image=image, local=local, remote=remote))
    return path


@pytest.mark.parametrize("local,remote,refused", [(100, 50, True), (100, 99, True), (100, 100, False),
                                                  (100, 101, False), (300, 250, True), (250, 250, False)])
def test_memory_blade_at_least_as_slow_as_local(tmp_path: Path, local: int, remote: int, refused: bool) -> None:
    path = rack_file(tmp_path, local=local, remote=remote)
    if not refused:  # equal is allowed, as in a campaign's matrix ("at least local_latency_ns")
        assert plan(path).rack.memory_blades[0].latency_ns == remote
        return
    with pytest.raises(SpecError) as err:
        load_testbed(path)
    assert err.value.message == (
        f"{path}: memory_blades[0].latency_ns: {remote} is below local_latency_ns ({local}); remote memory "
        f"cannot be faster than local memory in this model: raise it to at least {local}, or lower local_latency_ns")


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An images/ directory with recipes alpha and beta, and a directory that is not a recipe."""
    root = tmp_path / "images"
    for name in ("beta", "alpha"):
        (root / name).mkdir(parents=True)
        (root / name / "recipe.yaml").write_text("suite: bookworm\n")
    (root / "initrd").mkdir()  # no recipe.yaml: not a recipe
    monkeypatch.setenv("DDC_IMAGES_DIR", str(root))
    return root


def test_unknown_image_names_the_recipes(tmp_path: Path, recipes: Path, ddc_home: Path) -> None:
    for image in ("no-such-recipe", "initrd"):
        path = rack_file(tmp_path, image=image)
        with pytest.raises(SpecError) as err:
            plan(path)
        assert err.value.message == f"{path}: image: {image!r} is not an image recipe; use one of: alpha, beta"
    assert plan(rack_file(tmp_path, image="beta")).rack.image == "beta"
    assert load_testbed(rack_file(tmp_path, image="gone")).image == "gone", \
        "the model reads no directory: `down` and `status` still read a file whose recipe went away"


def test_no_recipe_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDC_IMAGES_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match=r"image: 'debian-bookworm' is not an image recipe; no recipe exists"):
        plan(rack_file(tmp_path))


def test_unknown_image_is_refused_by_every_verb_that_loads_the_testbed(
        tmp_path: Path, recipes: Path, ddc_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = rack_file(tmp_path, image="no-such-recipe")
    message = f"{path}: image: 'no-such-recipe' is not an image recipe; use one of: alpha, beta"
    assert cli.main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == f"ddc: error: {message}\n"
    assert cli.main(["up", "--dry-run", str(path)]) == 2
    assert capsys.readouterr().err == f"ddc: error: {message}\n"
    with pytest.raises(SpecError) as err:  # `ddc run` and `ddc run --dry-run` load the campaign first
        load_campaign(campaign_file(tmp_path, path))
    assert err.value.message == f"{tmp_path / 'c.yaml'}: testbed: {message}"
    assert not (ddc_home / "home").exists(), "nothing is created"


def campaign_file(tmp_path: Path, testbed: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\ntestbed: {testbed}\nworkloads: [ddc-stream]\n")
    return path
