"""``ddc run``: execute a campaign's runs on a testbed, and store each one.

For each run, on the campaign's compute blade, three steps, each one script
for the long-lived guest shell the session keeps (``guest.Shell``):

1. *prepare*: the run's kernel knobs, the workload's setup steps, a snapshot of
   the guest's counters. Link latency and bandwidth are set through the plugin's
   control socket, so no blade reboots between runs.
2. *command*: the plugin's counters are zeroed just before; the workload runs
   under ``timeout`` with a 1-second counter sampler beside it, and its own wall
   time is measured in the guest. A host thread samples the plugin meanwhile.
3. *finish*: a second snapshot, the sampler's output, the command's output, the
   teardown steps; then everything the run started is killed.

Every process a run starts lives in one cgroup in the guest
(``/sys/fs/cgroup/ddc-run``), so a run that timed out, a daemon a teardown
missed, or what a killed ``ddc run`` left behind is removed with one write to
``cgroup.kill``.

The run is saved in one transaction at its end (``store``), so a campaign
stopped at any point (Ctrl-C, kill -9, a crash) resumes with the first run not
in the store. A run that passes its timeout is recorded as ``timeout``; one
whose blade dies is recorded as ``failed``, the blade is restarted, and the
campaign goes on.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paramiko
from fabric import Connection

from . import collect, guest, pacing, plugin, state, testbed
from .campaign import CampaignPlan, Run, load_campaign, numactl, testbed_links
from .errors import DdcError, GuestError, HypervisorError, SpecError
from .hierarchy import figures
from .hypervisor import Hypervisor
from .spec import MAX_DILATION
from .state import Phase, TestbedState
from .store import RunRecord, Store
from .workload import Steps, parse_metrics, render

LOG = logging.getLogger(__name__)

# Not /tmp: systemd-tmpfiles empties it at boot, which under TCG may finish after
# sshd answers, that is, after a campaign has started on a blade it just brought up.
GUEST_DIR = "/var/tmp/ddc-run"
CGROUP = "/sys/fs/cgroup/ddc-run"
# The shell of a step joins the run's cgroup; every child inherits it.
JOIN = f"echo $BASHPID > {CGROUP}/cgroup.procs"
# bash's loadable builtins (Debian's bash-builtins, in the image): each process
# not started saves about 0.1 s of a vCPU under TCG.
BUILTINS = "for b in mkdir rm sleep; do enable -f /usr/lib/bash/$b $b 2>/dev/null; done; true"
TICK = f"{GUEST_DIR}/.tick"  # a FIFO nobody writes: `read -t` on it is a sleep without a process
KILL_ALL = f"[ -e {CGROUP}/cgroup.kill ] && echo 1 > {CGROUP}/cgroup.kill; true"
GRACE_S = 5  # between SIGTERM at the timeout and SIGKILL
HOST_SLACK_S = 60  # the host gives up on the SSH command this long after the guest's own timeout
RECOVER_S = 10  # how long a lost connection to a blade libvirt still calls running is retried
MARK = "@@ddc"
LAG_RETRIES = 2  # dilation auto: a run that lagged is run again, each time one step of the ladder slower


class Observer(Protocol):
    """What ``run_campaign`` tells its caller (the CLI shows it with rich)."""

    def begin(self, total: int, done: int, failed: int) -> None: ...

    def started(self, run: Run, warmup: bool) -> None: ...

    def finished(self, run: Run, status: str, warmup: bool) -> None: ...

    def say(self, message: str) -> None: ...


class Quiet:
    def begin(self, total: int, done: int, failed: int) -> None:
        pass

    def started(self, run: Run, warmup: bool) -> None:
        pass

    def finished(self, run: Run, status: str, warmup: bool) -> None:
        pass

    def say(self, message: str) -> None:
        LOG.info("%s", message)


@dataclass
class Outcome:
    out: Path
    total: int
    skipped: int = 0  # already in the store
    statuses: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0  # the runs' loop, testbed up and warm-up excluded
    workload_s: float = 0.0  # the commands' own time, measured in the guest
    steps_s: float = 0.0  # the workloads' setup and teardown steps, measured in the guest

    def overhead(self, with_steps: bool = False) -> float:
        """Orchestration seconds per run: wall time less the workloads' own (and,
        with ``with_steps``, less their setup and teardown too)."""
        own = self.workload_s + (self.steps_s if with_steps else 0.0)
        return (self.wall_s - own) / self.executed if self.executed else 0.0

    @property
    def executed(self) -> int:
        return sum(self.statuses.values())


def default_out(plan: CampaignPlan) -> Path:
    return Path("results") / plan.name


def dry_run(file: str | Path, out: str | Path | None = None) -> list[str]:
    plan = load_campaign(file)
    directory = Path(out) if out else default_out(plan)
    done: dict[str, str] = {}
    if (directory / "results.sqlite").is_file():
        with Store(directory) as store:
            done = store.done()
    lines = [f"# campaign {plan.name}: testbed {plan.testbed_file} (blade {plan.blade}), results in {directory}"]
    for run, line in zip(plan.runs, plan.describe(), strict=True):
        lines.append(line + (f"  [done: {done[run.run_id]}]" if run.run_id in done else ""))
    if plan.warmups:
        lines.append(f"# plus {len(plan.warmups)} warm-up run(s), not recorded")
    left = sum(1 for r in plan.runs if r.run_id not in done)
    lines.append(f"{len(plan.runs)} runs" + (f" ({left} left to run)" if done else ""))
    return lines


def run_campaign(file: str | Path, out: str | Path | None = None, *, observer: Observer | None = None) -> Outcome:
    obs = observer or Quiet()
    plan = load_campaign(file)
    directory = Path(out) if out else default_out(plan)
    with Store(directory) as store:
        _describe_campaign(store, plan)
        done = store.done()
        todo = [r for r in plan.runs if r.run_id not in done]
        outcome = Outcome(out=directory, total=len(plan.runs), skipped=len(plan.runs) - len(todo))
        obs.begin(len(plan.runs), len(done), sum(1 for s in done.values() if s != "ok"))
        if not todo:
            obs.say(f"all {len(plan.runs)} runs are already in {directory}")
            return outcome
        with Session(plan, obs) as session:
            for w in plan.warmups:
                obs.started(w, True)
                rec = session.execute(w)
                obs.finished(w, rec.status, True)
            start = time.monotonic()
            for run in todo:
                obs.started(run, False)
                rec = session.execute(run)
                for _ in range(LAG_RETRIES):
                    if not session.slow_down_after(rec):
                        break
                    rec = session.execute(run)
                store.save(rec)
                outcome.statuses[rec.status] = outcome.statuses.get(rec.status, 0) + 1
                outcome.workload_s += rec.workload_s or 0.0
                outcome.steps_s += (rec.setup_s or 0.0) + (rec.teardown_s or 0.0)
                obs.finished(run, rec.status, False)
            outcome.wall_s = time.monotonic() - start
            session.restore_links()
    return outcome


def _describe_campaign(store: Store, plan: CampaignPlan) -> None:
    meta = store.meta()
    if meta.get("name") not in (None, plan.name):
        raise SpecError(f"{store.path} holds campaign {meta['name']!r}, not {plan.name!r}",
                        hint="give another --out directory")
    values = {"name": plan.name, "campaign_file": str(plan.file), "campaign_yaml": plan.file.read_text(),
              "testbed_file": str(plan.testbed_file), "testbed_yaml": plan.testbed_file.read_text(),
              "blade": plan.blade}
    if "created" not in meta:
        values["created"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    for name, wl in plan.workloads.items():
        values[f"primary.{name}"] = wl.primary_metric.name
    store.set_meta(**values)


# -- one session on a testbed -------------------------------------------------------------------------

class Session:
    """The campaign's hold on its testbed: the blade's SSH connection, the
    hypervisor, the plugin. Restarts the blade when it dies."""

    def __init__(self, plan: CampaignPlan, obs: Observer) -> None:
        self.plan = plan
        self.obs = obs
        self.blade = plan.blade
        self.st: TestbedState | None = None
        self.conn: Connection | None = None
        self.shell: guest.Shell | None = None
        self.hv: Hypervisor | None = None

    def __enter__(self) -> Session:
        self._stack = contextlib.ExitStack()
        try:
            # Two campaigns on one blade would share its cgroup and its counters.
            self._stack.enter_context(state.locked(self.plan.testbed.rack.name, "campaign"))
            self.st = self._ensure_up()
            self.hv = self._stack.enter_context(Hypervisor(self.st.uri))
            self._check_plugin()
            self._connect()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._pace(True)  # a paced testbed stays paced for whoever uses it next
        self._disconnect()
        self._stack.close()

    @property
    def dilation(self) -> float:
        """Paced mode's k; 0 when the testbed is not paced."""
        return self.st.dilation if self.st is not None and self.st.mode == "paced" else 0.0

    @property
    def has_plugin(self) -> bool:
        return self.st is not None and self.st.plugin

    @property
    def domain(self) -> str:
        assert self.st is not None
        return self.st.blades[self.blade].domain

    def _ensure_up(self) -> TestbedState:
        tb = self.plan.testbed
        name = tb.rack.name
        st = state.load(name)
        if st is not None and (st.phase != Phase.UP or st.spec_digest != tb.digest):
            why = "a different topology" if st.phase == Phase.UP else f"state {st.phase}"
            self.obs.say(f"testbed {name} is up with {why}; re-provisioning it from {self.plan.testbed_file}")
            testbed.down(name, say=self.obs.say)
            st = None
        if st is None:
            self.obs.say(f"bringing up testbed {name} from {self.plan.testbed_file}")
            testbed.up(self.plan.testbed_file, say=self.obs.say)
        st = testbed.load_up(name)
        with Hypervisor(st.uri) as hv:
            dom_state = hv.state(st.blades[self.blade].domain)
        if dom_state != "running":
            self.obs.say(f"compute blade {self.blade} is {dom_state}; restarting it")
            testbed.restart_blade(name, self.blade, say=self.obs.say)
        return st

    def _check_plugin(self) -> None:
        """Without the plugin (KVM, mode off), links keep the testbed file's values."""
        assert self.st is not None
        if self.has_plugin:
            return
        fixed = testbed_links(self.plan.testbed.rack, self.blade)
        for run in self.plan.runs:
            for mb, link in run.links().items():
                for key, value in link.items():
                    if value != fixed.get(mb, {}).get(key):
                        raise SpecError(
                            f"{self.plan.file}: matrix: {mb}.{key} is swept, but testbed "
                            f"{self.st.name} runs without the latency plugin (accel {self.st.accel})",
                            hint="latency and bandwidth are set through the plugin: use accel: tcg "
                                 "and mode: inject or account")

    def _connect(self) -> None:
        assert self.st is not None
        self.conn = guest.connect(testbed.endpoint(self.st, self.blade))
        self.shell = guest.Shell(self.conn, self.blade, prelude=BUILTINS)
        # Whatever an interrupted earlier campaign left running goes first.
        code, out = self.shell.run(f"{KILL_ALL}; rm -rf {GUEST_DIR}; mkdir -p {GUEST_DIR} {CGROUP}; mkfifo {TICK}",
                                   timeout=60)
        if code != 0:
            raise GuestError(f"{self.blade}: cannot prepare {GUEST_DIR} and {CGROUP}: {out.strip()}")
        # No wait for the guest's boot jobs here: `up` and `restart_blade`
        # return only once the blade's boot has finished (guest.wait_ready).

    def _disconnect(self) -> None:
        for closing in (self.shell, self.conn):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()
        self.shell = self.conn = None

    def _reconnect(self) -> None:
        self._disconnect()
        self._connect()

    # -- plugin -------------------------------------------------------------------------------------

    def _ctl(self) -> plugin.Control:
        assert self.st is not None
        return plugin.Control(self.st.plugin_socket(self.blade))

    def _set_links(self, run: Run) -> None:
        if not self.has_plugin:
            return
        with self._ctl() as ctl:
            for mb, link in run.links().items():
                ctl.request("set_link", blade=mb, **link)
            if self.dilation:
                ctl.request("set_pacing", dilation=0)  # see _pace

    def _pace(self, on: bool) -> None:
        """Paced mode runs only the command at k x model time. Setup, snapshots
        and teardown time nothing, so the clocks free-run (dilation 0) meanwhile:
        at k = 30 the campaign's own steps in the guest cost 40 s a run."""
        if self.dilation and self.has_plugin:
            with contextlib.suppress(DdcError), self._ctl() as ctl:
                ctl.request("set_pacing", dilation=self.dilation if on else 0)

    def slow_down_after(self, rec: RunRecord) -> bool:
        """When ``rec`` lagged (the host could not keep up with k x model time: it
        got busier after `up` measured k, or the run is dearer to emulate than
        the calibration) on a testbed whose file says ``dilation: auto``, raise k
        one step for this run and the rest, and say so: True means run it again.
        A k the file pins is the user's: the run stays, flagged as lagged."""
        if (rec.status != "ok" or not self.dilation or not pacing.is_lagged(rec.dilation, rec.lag_fraction)
                or self.plan.testbed.rack.dilation != "auto"):
            return False
        assert self.st is not None and rec.lag_fraction is not None  # is_lagged said so
        k = pacing.slower(self.dilation)
        if k > MAX_DILATION:
            return False
        self.obs.say(f"run {rec.run_id} lagged {100 * rec.lag_fraction:.1f} % of its model time at dilation "
                     f"{self.dilation:g} (the host could not keep up with k x model time); running it again at {k:g}, "
                     "and the rest of the campaign too")
        testbed.set_dilation(self.st.name, k)
        self.st.dilation = k
        return True

    def restore_links(self) -> None:
        """Put the links back as the testbed file has them."""
        if not self.has_plugin:
            return
        with contextlib.suppress(DdcError), self._ctl() as ctl:
            for mb, link in testbed_links(self.plan.testbed.rack, self.blade).items():
                ctl.request("set_link", blade=mb, **link)

    # -- one run ------------------------------------------------------------------------------------

    def execute(self, run: Run) -> RunRecord:
        wl = self.plan.workloads[run.workload]
        rdir = f"{GUEST_DIR}/{run.run_id}"
        steps = render(wl, run.workload_params(wl), numactl(run.placement), rdir)
        # Paced: a timeout is model seconds, so the guest gets k times as many.
        timeout = self.plan.timeout_of(run) * (self.dilation or 1)
        rec = RunRecord(run_id=run.run_id, seq=run.seq, workload=run.workload, rep=run.rep, params=run.params,
                        status="failed", blade=self.blade, command=steps.command, started=time.time(),
                        finished=0.0)
        try:
            self._execute(run, rec, steps, rdir, timeout)
        except (GuestError, HypervisorError, plugin.PluginError, paramiko.SSHException, OSError, EOFError) as exc:
            rec.status = "failed"
            rec.error = f"{type(exc).__name__}: {exc}"
            self._recover(rec)
        rec.finished = time.time()
        if rec.status == "ok":
            found, missing = parse_metrics(wl, rec.stdout, rec.stderr)
            info = {m.name: (m.unit, str(m.better)) for m in wl.metrics}
            rec.metrics = [(k, v, *info[k]) for k, v in found.items()]
            if missing:
                rec.status = "failed"
                rec.error = f"metrics not found in the output: {', '.join(missing)}"
        return rec

    def _execute(self, run: Run, rec: RunRecord, steps: Steps, rdir: str, timeout: float) -> None:
        self._set_links(run)
        knobs = "".join(_knob(k, v) for k, v in run.knobs().items())
        code, out = self._step(f"set -e; {JOIN}; mkdir {rdir}; cd {rdir}\n{knobs}a=$EPOCHREALTIME\n{steps.setup}\n"
                               f'echo "{MARK} setup $a $EPOCHREALTIME"; {collect.SNAPSHOT}', timeout + HOST_SLACK_S)
        rec.setup_s = _span(out, "setup")
        if code != 0:
            rec.stderr, rec.exit_code = out, code
            rec.error = f"setup failed with exit code {code}"
            self._finish(rec, rdir, steps.teardown, None, 0.0)
            return
        before = collect.parse_snapshot(out.split(f"{MARK} setup ", 1)[-1])

        dom_before = self._domstats()
        if self.has_plugin:
            with self._ctl() as ctl:
                if self.dilation:
                    ctl.request("set_pacing", dilation=self.dilation)  # every vCPU starts on time
                ctl.request("reset")
        sampler = PluginSampler(self, self.plan.spec.sample_interval) if self.has_plugin else None
        t0 = time.time()
        if sampler:
            sampler.start(t0)
        try:
            code, out = self._step(
                f"{JOIN}; cd {rdir}; {collect.sampler(self.plan.spec.sample_interval, rdir + '/samples', TICK)}\n"
                f"s=$EPOCHREALTIME; timeout -k {GRACE_S} {timeout:g} sh -c {shlex.quote(steps.command)} "
                f">{rdir}/stdout 2>{rdir}/stderr; rc=$?; e=$EPOCHREALTIME; kill %1 2>/dev/null\n"
                f'echo "{MARK} rc=$rc start=$s end=$e"; exit $rc', timeout + HOST_SLACK_S)
            timed_out = False
        except TimeoutError:
            code, out, timed_out = -1, "", True
            self._reconnect()  # the old shell is still waiting for the command
        finally:
            if sampler:
                rec.samples += sampler.stop()
        guest_t0 = _parse_mark(out, rec)
        rec.exit_code = None if timed_out else code
        if timed_out or code in (124, 128 + 9):
            rec.status = "timeout"
            paced = f" (model time: {timeout:g} s wall at dilation {self.dilation:g})" if self.dilation else ""
            rec.error = (f"passed its timeout of {timeout / (self.dilation or 1):g} s{paced}"
                         + (" (the host gave up on the guest)" if timed_out else ""))
        elif code != 0:
            rec.error = f"exited with {code}"
        else:
            rec.status = "ok"
        if self.has_plugin:
            self._hierarchy(rec)
            self._pace(False)
        rec.counters += [("domstats", None, k, dom_before.get(k), v) for k, v in self._domstats().items()]
        self._finish(rec, rdir, steps.teardown, before, guest_t0 or t0)

    def _step(self, script: str, timeout: float) -> tuple[int, str]:
        assert self.shell is not None
        return self.shell.run(script, timeout)

    def _finish(self, rec: RunRecord, rdir: str, teardown: str, before: collect.Counters | None,
                t0: float) -> None:
        """Snapshot, samples, the command's output, teardown; then kill whatever the run left."""
        show = "; ".join(f'echo {MARK}; [ -r {rdir}/{f} ] && echo "$(<{rdir}/{f})"' for f in
                         ("samples", "stdout", "stderr"))
        script = (f"{collect.SNAPSHOT}; {show}; echo {MARK}; "
                  + (f"a=$EPOCHREALTIME; cd {rdir} 2>/dev/null && ( {teardown} ) >{rdir}/teardown.log 2>&1; "
                     f'rc=$?; echo "rc=$rc"; echo "{MARK} teardown $a $EPOCHREALTIME"; '
                     f"[ $rc = 0 ] || tail -5 {rdir}/teardown.log; " if teardown else 'echo "rc=0"; ')
                  + f"{KILL_ALL}; cd /; rm -rf {rdir} &")
        code, out = self._step(script, 120)
        parts = out.split(MARK + "\n")
        if len(parts) != 5:
            raise GuestError(f"{self.blade}: unexpected output of the finish step (exit code {code}): {out[-500:]}")
        snapshot, samples, stdout, stderr, tail = parts
        if before is not None:
            rec.counters += collect.pair(before, collect.parse_snapshot(snapshot))
            rec.samples += collect.parse_samples(samples, t0)
            rec.stdout, rec.stderr = stdout, stderr
        rec.teardown_s = _span(tail, "teardown")
        if not tail.startswith("rc=0"):
            note = "teardown failed: " + " | ".join(t for t in tail.strip().splitlines() if not t.startswith(MARK))
            rec.error = f"{rec.error}; {note}" if rec.error else note

    def _hierarchy(self, rec: RunRecord) -> None:
        assert self.st is not None
        with self._ctl() as ctl:
            raw = ctl.stats()
            lat = testbed.node_latencies(ctl.request("config"))
        fig = figures(raw, self.st.hit_ns, lat)
        clocks = pacing.clocks(raw)
        if clocks.paced:
            rec.dilation, rec.lag_ns, rec.lag_fraction = clocks.dilation, clocks.lag_ns, clocks.lag_fraction
        rec.hierarchy = raw
        rec.levels = collect.level_rows(fig)
        rec.nodes = collect.node_rows(fig, lat)

    def _domstats(self) -> dict[str, float]:
        assert self.hv is not None
        try:
            return collect.flat_domstats(self.hv.domstats(self.domain))
        except HypervisorError as exc:
            LOG.warning("%s", exc)
            return {}

    def _recover(self, rec: RunRecord) -> None:
        """After a lost connection: if the blade died, say so in the run and restart it.
        libvirt may still call a domain running for a moment after its QEMU was
        killed, so a failed reconnection asks again, for up to RECOVER_S."""
        assert self.st is not None and self.hv is not None
        deadline = time.monotonic() + RECOVER_S
        while True:
            dom_state = self.hv.state(self.domain)
            if dom_state != "running":
                rec.error = f"blade {self.blade} died (domain {dom_state}): {rec.error}"
                self.obs.say(f"run {rec.run_id}: blade {self.blade} is {dom_state}; restarting it")
                testbed.restart_blade(self.st.name, self.blade, say=self.obs.say)
                self._reconnect()
                return
            try:
                self._reconnect()
                return
            except GuestError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _knob(name: str, value: Any) -> str:
    if name == "numa_balancing":
        return f"sysctl -qw kernel.numa_balancing={int(value)}\n"
    if name == "demotion_enabled":
        return f"echo {'true' if value else 'false'} > /sys/kernel/mm/numa/demotion_enabled\n"
    raise ValueError(name)


def _span(out: str, step: str) -> float | None:
    """Seconds between the two time stamps of a ``@@ddc <step> START END`` line."""
    m = re.search(rf"^{MARK} {step} ([0-9.]+) ([0-9.]+)$", out, re.MULTILINE)
    return round(float(m.group(2)) - float(m.group(1)), 6) if m else None


def _parse_mark(out: str, rec: RunRecord) -> float | None:
    """The command step's marker line: set the command's own wall time, return its start."""
    for line in out.splitlines():
        if line.startswith(MARK + " rc="):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
            with contextlib.suppress(KeyError, ValueError):
                t0 = float(fields["start"])
                rec.workload_s = round(float(fields["end"]) - t0, 6)
                return t0
    return None


class PluginSampler:
    """A host thread that reads the plugin's counters every ``interval`` seconds."""

    def __init__(self, session: Session, interval: float) -> None:
        self.session = session
        self.interval = interval
        self.samples: list[tuple[float, str, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="plugin-sampler", daemon=True)
        self._t0 = 0.0

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread.start()

    def stop(self) -> list[tuple[float, str, str, float]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.samples

    def _loop(self) -> None:
        try:
            with self.session._ctl() as ctl:
                while not self._stop.wait(self.interval):
                    t = round(time.time() - self._t0, 3)
                    for name, value in collect.plugin_sample(ctl.stats()).items():
                        self.samples.append((t, "plugin", name, value))
        except DdcError as exc:
            LOG.warning("plugin sampler stopped: %s", exc)
