from __future__ import annotations

from pathlib import Path

import pytest

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
