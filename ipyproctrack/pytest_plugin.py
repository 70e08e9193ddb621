"""pytest plugin: tracked servers in tests, their output in failure reports, a leak guard.

Registered through the ``pytest11`` entry point ``ipyproctrack``: installing the package is
enough, and ``-p no:ipyproctrack`` turns it off. A thin front over the engine.

- ``proctrack``: a ``Tracker`` for one test; its trees are torn down when the test ends,
  whatever the outcome. ``proctrack_session``: one ``Tracker`` for the whole session.
- A failing test's report gets a section per process its fixtures tracked (name, pid,
  state, return code, the last ``--proctrack-tail`` lines), and a "proctrack teardown"
  section with the teardown's escalation lines.
- The leak guard. This run's session tag is ``IPYPROCTRACK_SESSION=pytest-...``: the plugin
  puts it into ``os.environ`` when the session starts, so every process a test starts
  with the inherited environment carries it (a plain ``subprocess.Popen`` too); tracked
  launches carry their fixture Tracker's own session tag instead. At the session's end a
  live process carrying either is a leak: it is listed, torn down, and (with
  ``--proctrack-leaks=fail``, the default) fails the run.
- pytest-xdist: each worker has its own run tag and trackers and guards only those; the
  controller (which runs no tests) only collects the workers' verdicts.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from ipyproctrack._engine.leftovers import (
    SESSION_VARIABLE,
    find_leftovers,
    stop_leftovers,
    wait_leftovers_gone,
)
from ipyproctrack._engine.process import TrackedProcess
from ipyproctrack._engine.tracker import Tracker

if TYPE_CHECKING:
    from ipyproctrack._proc.teardown import CleanupReport

__all__ = ["proctrack", "proctrack_session"]

log = logging.getLogger(__name__)

LEAK_MODES = ("fail", "warn", "off")
# Processes that are on their way out at the session's end (a keeper finishing its sweep)
# get this long before they count as leaks.
LEAK_GRACE = 2.0
_WORKER_KEY = "ipyproctrack_leaks"  # in xdist's workeroutput: the worker's leak lines


@dataclass
class _Run:
    """This pytest process's state (one per ``Config``: pytester runs nest)."""

    tail: int
    leaks_mode: str
    grace: float
    run_tag: str
    controller: bool = False  # an xdist controller: runs no tests, starts nothing
    tracker_tags: set[str] = field(default_factory=set)
    saved_env: str | None = None
    env_set: bool = False
    session_tracker: Tracker | None = None
    session_cleanup: CleanupReport | None = None
    leaks: list[str] = field(default_factory=list)  # one line per leaked process, then notes
    leak_count: int = 0

    def new_tracker(self, log_dir: os.PathLike[str]) -> Tracker:
        tracker = Tracker(log_dir=log_dir, grace=self.grace)
        self.tracker_tags.add(tracker.session_tag)
        return tracker


_RUN = pytest.StashKey[_Run]()
_TRACKER = pytest.StashKey[Tracker]()  # an item's function-scoped tracker
_CLEANUP = pytest.StashKey["CleanupReport"]()  # ... and its teardown report
_FAILED = pytest.StashKey[bool]()  # the item's setup or call failed


# --- options and configuration ----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ipyproctrack", "tracked processes (ipyproctrack)")
    group.addoption("--proctrack-tail", type=int, default=None, metavar="N",
                    help="output lines per tracked process in a failure report (default 50)")
    group.addoption("--proctrack-leaks", choices=LEAK_MODES, default=None,
                    help="a process carrying this run's session tag at the end of the "
                         "session: fail the run (default), warn, or off")
    group.addoption("--proctrack-grace", type=float, default=None, metavar="SECONDS",
                    help="SIGTERM-to-SIGKILL grace of the fixtures' teardowns (default 3)")
    parser.addini("proctrack_tail", "default of --proctrack-tail", default="50")
    parser.addini("proctrack_leaks", "default of --proctrack-leaks", default="fail")
    parser.addini("proctrack_grace", "default of --proctrack-grace", default="3.0")


def _option(config: pytest.Config, name: str) -> str:
    value = config.getoption(f"--{name.replace('_', '-')}")
    return str(value if value is not None else config.getini(name))


def pytest_configure(config: pytest.Config) -> None:
    leaks = _option(config, "proctrack_leaks")
    if leaks not in LEAK_MODES:
        raise pytest.UsageError(f"proctrack_leaks must be one of {', '.join(LEAK_MODES)}")
    try:
        tail, grace = int(_option(config, "proctrack_tail")), float(
            _option(config, "proctrack_grace"))
    except ValueError as exc:
        raise pytest.UsageError(f"bad proctrack_tail or proctrack_grace: {exc}") from None
    worker = getattr(config, "workerinput", {}).get("workerid")
    prefix = f"pytest-{worker}" if worker else "pytest"
    config.stash[_RUN] = _Run(tail=max(tail, 0), leaks_mode=leaks, grace=grace,
                              run_tag=f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    run = session.config.stash[_RUN]
    # xdist registers its controller ("dsession") in a trylast pytest_configure.
    run.controller = session.config.pluginmanager.has_plugin("dsession")
    if run.controller:
        return
    run.saved_env = os.environ.get(SESSION_VARIABLE)
    os.environ[SESSION_VARIABLE] = run.run_tag
    run.env_set = True


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None or not run.env_set:
        return
    if run.saved_env is None:
        os.environ.pop(SESSION_VARIABLE, None)
    else:
        os.environ[SESSION_VARIABLE] = run.saved_env
    run.env_set = False


# --- fixtures ---------------------------------------------------------------------------------


def _log_dir(factory: pytest.TempPathFactory, name: str) -> os.PathLike[str]:
    return factory.mktemp("proctrack-" + re.sub(r"\W", "_", name)[:30])


def _check_teardown(report: CleanupReport, what: str) -> None:
    if not report.ok:
        pytest.fail(f"proctrack: the teardown of {what} left processes alive:\n{report}",
                    pytrace=False)


@pytest.fixture
def proctrack(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    """A ``Tracker`` for one test: everything it started is torn down when the test ends,
    pass or fail. ``proctrack.start(cmd, name="ws", ready=PortReady(port))``."""
    run = request.config.stash[_RUN]
    tracker = run.new_tracker(_log_dir(tmp_path_factory, request.node.name))
    request.node.stash[_TRACKER] = tracker
    try:
        yield tracker
    finally:
        report = tracker.close()
        request.node.stash[_CLEANUP] = report
    _check_teardown(report, f"{request.node.name}'s processes")


@pytest.fixture(scope="session")
def proctrack_session(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    """One ``Tracker`` for the whole session, for servers that are expensive to start;
    torn down when the session's fixtures are."""
    run = request.config.stash[_RUN]
    tracker = run.new_tracker(_log_dir(tmp_path_factory, "session"))
    run.session_tracker = tracker
    try:
        yield tracker
    finally:
        report = tracker.close()
        run.session_cleanup = report
    _check_teardown(report, "the session's processes")


# --- failure reports --------------------------------------------------------------------------


def _processes_of(item: pytest.Item) -> list[TrackedProcess]:
    """What the item's fixtures tracked: its own tracker's, then the session tracker's."""
    procs: list[TrackedProcess] = []
    tracker = item.stash.get(_TRACKER, None)
    if tracker is not None:
        procs += tracker.processes()
    run = item.config.stash[_RUN]
    if run.session_tracker is not None and "proctrack_session" in getattr(
            item, "fixturenames", ()):
        procs += run.session_tracker.processes()
    return procs


def describe_process(proc: TrackedProcess, *, tail: int) -> str:
    """One process's report section: who it is, its state, its last output lines."""
    code = proc.returncode
    lines = [
        f"name:        {proc.name}",
        f"command:     {proc.command}",
        f"pid:         {proc.pid}",
        f"state:       {proc.state.describe()}",
        f"return code: {code if code is not None else '- (still running)'}",
        f"log:         {proc.log_path}",
    ]
    if tail > 0:
        text = proc.tail(tail)
        lines.append(f"---- last {tail} lines of output ----" if text else "---- no output ----")
        if text:
            lines.append(text.rstrip("\n"))
    return "\n".join(lines)


def _teardown_section(item: pytest.Item) -> str:
    parts = []
    tracker = item.stash.get(_TRACKER, None)
    if tracker is not None:
        parts += [f"{p.name}: pid {p.pid}, {p.state.describe()}" for p in tracker.processes()]
    cleanup = item.stash.get(_CLEANUP, None)
    if cleanup is not None and cleanup.names:
        parts.append(str(cleanup))
    session_cleanup = item.config.stash[_RUN].session_cleanup
    if session_cleanup is not None and session_cleanup.messages and item.nextitem is None:
        parts.append("session teardown:\n" + str(session_cleanup))
    return "\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    run = item.config.stash.get(_RUN, None)
    if run is None:
        return rep
    if rep.when in ("setup", "call") and rep.failed:
        item.stash[_FAILED] = True
        for proc in _processes_of(item):
            rep.sections.append((f"proctrack {proc.name}", describe_process(proc, tail=run.tail)))
    elif rep.when == "teardown" and (rep.failed or item.stash.get(_FAILED, False)):
        # pytest prints a teardown report's sections named "...teardown..." under the
        # failure; xdist ships them with the report.
        text = _teardown_section(item)
        if text:
            rep.sections.append(("proctrack teardown", text))
    return rep


# --- the leak guard ---------------------------------------------------------------------------


def _guard(run: _Run) -> None:
    """Find this run's leaks and tear them down: one line each, then the teardown's notes."""
    found = wait_leftovers_gone(find_leftovers({run.run_tag, *run.tracker_tags}), LEAK_GRACE)
    if not found:
        return
    report = stop_leftovers(found, grace=1.0)
    run.leak_count = len(found)
    run.leaks = [lo.describe() for lo in found] + [f"  {m}" for m in report.messages]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(_RUN, None)
    if run is None or run.leaks_mode == "off":
        return
    if not run.controller:
        _guard(run)
        workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[_WORKER_KEY] = (run.leak_count, run.leaks)
    if run.leaks and run.leaks_mode == "fail" and session.exitstatus in (
            pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: take in a worker's leak verdict."""
    run = node.config.stash.get(_RUN, None)
    count, lines = getattr(node, "workeroutput", {}).get(_WORKER_KEY) or (0, [])
    if run is not None and count:
        worker = getattr(node, "workerinput", {}).get("workerid", "?")
        run.leak_count += count
        run.leaks += [f"[{worker}] {line}" for line in lines]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    if run.session_cleanup is not None and run.session_cleanup.messages:
        terminalreporter.write_sep("-", "proctrack: session teardown")
        terminalreporter.write_line(str(run.session_cleanup))
    if not run.leak_count:
        return
    verdict = "failed the run" if run.leaks_mode == "fail" else "warning"
    terminalreporter.write_sep(
        "=", f"proctrack: {run.leak_count} process(es) of this run left alive ({verdict})",
        red=run.leaks_mode == "fail", yellow=run.leaks_mode == "warn")
    terminalreporter.write_line(
        f"each carried this run's session tag ({SESSION_VARIABLE}=pytest-...) or a fixture "
        "Tracker's; the leak guard stopped them:")
    for line in run.leaks:
        terminalreporter.write_line("  " + line)
