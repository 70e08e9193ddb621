"""The magics in an in-process IPython shell: argument handling, rendering, config, budget.

No kernel here, so the shell has no widget frontend and the magics print status lines;
the widget tests build real widgets (ipywidgets falls back to dummy comms) on real
processes. The kernel-level behaviour is in test_kernel.py.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from _procs import closed_port, is_alive, wait_dead
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets import TraitError

import ipyproctrack._notebook as nb
from ipyproctrack import Phase, PortReady, ProcessState, TrackedProcess
from ipyproctrack._engine.naming import base_name
from ipyproctrack._notebook import hooks
from ipyproctrack._notebook import session as session_module
from ipyproctrack._notebook.magics import parse_env
from ipyproctrack._notebook.refresher import MESSAGE_BUDGET, Refresher
from ipyproctrack._notebook.spec import LaunchSpec
from ipyproctrack._notebook.stats import EMPTY_STATS
from ipyproctrack._notebook.views import (
    STDERR_STYLE,
    CleanupView,
    LogsView,
    ProcessTable,
    badge_html,
)
from ipyproctrack._notebook.widget import ProcessWidget, has_widget_frontend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ip(tmp_path: Path) -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    nb._saved_settings.pop(shell, None)  # a fresh ProcTrackConfig for every test
    shell.run_line_magic("load_ext", "ipyproctrack")
    shell.run_line_magic("config", "ProcTrackConfig.grace = 0.5")
    # the logs go to the test's directory, not to the per-user base under /tmp
    shell.run_line_magic("config", f"ProcTrackConfig.log_dir = {str(tmp_path / 'logs')!r}")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "ipyproctrack")
        # %config writes into the shell's own config too: leave none to later tests
        shell.config.pop("ProcTrackConfig", None)


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call an untyped IPython method from typed code."""
    return fn(*args)


def cell(ip: InteractiveShell, line: str, body: str) -> Any:
    return call(ip.run_cell_magic, "tracked", line, body)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


# ----------------------------------------------------------------------------- usage errors

CELL_ERRORS = [
    ("", "   \n\n", "needs a shell script"),
    ("--bogus", "sleep 1", "unrecognized arguments: --bogus"),
    ("a b", "sleep 1", "takes one NAME"),
    ("x --env FOO", "sleep 1", "KEY=VALUE.*'FOO'"),
    ("x --env 1X=2", "sleep 1", "not a valid variable name"),
    ("x --grace -1", "sleep 1", "--grace must be a number of seconds from 0 to 600"),
    ("x --grace inf", "sleep 1", "--grace must be .* not inf"),
    ("x --grace nan", "sleep 1", "--grace must be .* not nan"),
    ("x --grace 601", "sleep 1", "--grace must be .* to 600, not 601"),
    ("x --grace abc", "sleep 1", "invalid float value"),
    ("x --cwd /nonexistent/dir", "sleep 1", "not a directory"),
    ("x --cwd ~nosuchuser_ipyproctrack/d", "sleep 1", "--cwd: .*~nosuchuser_ipyproctrack/d"),
    ("--env A=1 B=2", "sleep 1", "bad name 'B=2'.*one KEY=VALUE per --env"),
    ("x --timeout 5", "sleep 1", "--timeout needs --wait-port"),
    ("x --wait-port 70000", "sleep 1", "1-65535"),
    ("x --wait-http ftp://host/", "sleep 1", "--wait-http"),
    ("x --wait-output (", "sleep 1", "bad regular expression"),
    ("x --wait-port 9 --timeout 0", "sleep 1", "--timeout must be .* > 0"),
    ("x --wait-port 9 --timeout inf", "sleep 1", "--timeout must be a finite"),
    ("'a b'", "sleep 1", "bad name"),
    ("x", "nosuchcommand_ipyproctrack_test", "command not found"),
    ("x --wait-output 'unbalanced", "sleep 1", "cannot split the arguments"),
]


@pytest.mark.parametrize(("line", "body", "message"), CELL_ERRORS)
def test_cell_magic_usage_errors(ip: InteractiveShell, line: str, body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        cell(ip, line, body)
    assert "\n" not in str(info.value)
    assert not nb.current_session().has_tracker or not nb.current_tracker().processes()


LINE_ERRORS = [
    ("tracked", "", "needs a command"),
    ("tracked", "-n", "needs a value"),
    ("tracked", "--bogus sleep 1", "unknown option '--bogus'"),
    ("tracked", "-n x --env NOEQUALS sleep 1", "KEY=VALUE"),
    ("tracked", "nosuchcommand_ipyproctrack_test --flag", "command not found"),
    ("proctrack", "extra", "unrecognized arguments"),
    ("proctrack_logs", "", "required: NAME"),
    ("proctrack_logs", "nope", "no tracked process named 'nope'"),
    ("proctrack_logs", "nope --tail 0", "--tail must be >= 1"),
    ("proctrack_cleanup", "nope", "no tracked process named 'nope'"),
    ("proctrack_cleanup", "--grace -2", "--grace must be .* from 0"),
    ("proctrack_cleanup", "--grace inf", "--grace must be .* not inf"),
]


@pytest.mark.parametrize(("magic", "line", "message"), LINE_ERRORS)
def test_line_magic_usage_errors(ip: InteractiveShell, magic: str, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        ip.run_line_magic(magic, line)
    assert "\n" not in str(info.value)


def test_unknown_name_lists_the_known_ones(ip: InteractiveShell) -> None:
    ip.run_line_magic("tracked", "-n alpha sleep 100")
    with pytest.raises(UsageError, match=r"no tracked process named 'beta' \(known: alpha\)"):
        ip.run_line_magic("proctrack_logs", "beta")


def test_usage_error_shows_one_line_and_no_traceback(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = call(ip.run_cell, "%%tracked --env FOO\nsleep 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err
    assert err.strip().startswith("UsageError:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_readiness_failure_shows_last_lines_and_leaves_nothing(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError) as info:
        cell(ip, "slow --wait-output NEVER --timeout 1", "echo first-line; echo second-line\n"
             "exec sleep 100\n")
    text = str(info.value)
    assert "not ready after 1 s" in text and "second-line" in text
    proc = nb.get_process("slow")
    assert proc.returncode is not None and not proc.tree()


def test_exit_before_ready_names_the_code(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="exited with code 3") as info:
        cell(ip, "early --wait-port 9 --timeout 10", "echo bye >&2; exit 3\n")
    assert "bye" in str(info.value)


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("magic", "options"),
    [
        ("tracked", ["--cwd", "--env", "--grace", "--no-widget", "--wait-port", "--wait-http",
                     "--wait-output", "--timeout", "-n NAME"]),
        ("proctrack", []),
        ("proctrack_cleanup", ["--grace", "NAME"]),
        ("proctrack_logs", ["--tail", "NAME"]),
    ],
)
def test_help_comes_from_the_argument_parser(
    ip: InteractiveShell, magic: str, options: list[str]
) -> None:
    doc = call(ip.find_line_magic, magic).__doc__ or ""
    assert f"%{magic}" in doc
    for option in options:
        assert option in doc, (option, doc)
    if magic == "tracked":
        assert doc == (call(ip.find_cell_magic, "tracked").__doc__ or "")


# ----------------------------------------------------------------------------- names, env


@pytest.mark.parametrize(
    ("script", "base"),
    [
        ("python -m http.server 8000", "python"),
        ("# start the server\nset -e\ncd /tmp\nFOO=1 exec python3 app.py", "python3"),
        ("exec env A=1 B=2 /usr/bin/node server.js", "node"),
        ("cd /srv && uvicorn app:app", "uvicorn"),
        ("timeout 10 ./run-it.sh --fast", "run-it.sh"),
        ("uv run jupyter lab", "jupyter"),
        ("echo hello", "echo"),
        ("   \n# only a comment\n", "cell"),
    ],
)
def test_generated_base_names(script: str, base: str) -> None:
    assert base_name(script) == base


def test_unnamed_cells_get_numbered_names(ip: InteractiveShell) -> None:
    cell(ip, "", "# a comment first\nexec python -c 'import time; time.sleep(100)'\n")
    cell(ip, "", "python -c 'import time; time.sleep(100)'\n")
    assert [p.name for p in nb.current_tracker().processes()] == ["python-1", "python-2"]


def test_parse_env() -> None:
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(UsageError):
        parse_env(["A"])


def test_line_form_keeps_the_command_as_written(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic(
        "tracked",
        """-n q --env GREETING=hi --grace 0.2 python -c "import os, time; """
        """print(os.environ['GREETING'], 'a  b', flush=True); time.sleep(100)" """,
    )
    assert re.match(r"q: pid \d+ running", capsys.readouterr().out)
    proc = nb.get_process("q")
    wait_for(lambda: "hi a  b" in proc.tail(5))
    logs = ip.run_line_magic("proctrack_logs", "q --tail 3")
    assert isinstance(logs, LogsView)
    assert "hi a  b" in repr(logs) and str(proc.log_path) in repr(logs)
    assert "hi a  b" in logs._repr_html_()


def test_cell_env_cwd_and_several_env_values(ip: InteractiveShell, tmp_path: Path) -> None:
    cell(ip, f"--cwd {tmp_path} --env A=1 --env B=2 --env C=3 w",  # NAME after the options
         'echo "$A$B$C $(pwd)"; exec sleep 100\n')
    proc = nb.get_process("w")
    wait_for(lambda: "123" in proc.tail(5))
    assert proc.tail(5).split() == ["123", str(tmp_path.resolve())]


# ----------------------------------------------------------------------------- re-run, views


def test_rerunning_a_named_cell_replaces_the_tree(ip: InteractiveShell) -> None:
    cell(ip, "svc", "sleep 1000 & exec sleep 1001\n")
    old = nb.get_process("svc")
    wait_for(lambda: len(old.tree()) == 2)  # bash has forked the background sleep
    old_tree = [(i.pid, i.create_time) for i in old.tree()]
    cell(ip, "svc", "sleep 1000 & exec sleep 1002\n")
    new = nb.get_process("svc")
    assert new is not old and old.stopped and old.returncode is not None
    assert wait_dead(old_tree, 3.0) == []
    wait_for(lambda: len(new.tree()) == 2)
    live = [p for p in nb.current_tracker().processes() if p.returncode is None or p.tree()]
    assert [p.name for p in live] == ["svc"]


def test_proctrack_table(ip: InteractiveShell) -> None:
    empty = ip.run_line_magic("proctrack", "")
    assert isinstance(empty, ProcessTable) and repr(empty) == "no tracked processes"
    cell(ip, "srv --wait-output Serving",
         "exec python -u -m http.server 0 --bind 127.0.0.1\n")
    cell(ip, "done", "echo bye\n")
    wait_for(lambda: nb.get_process("done").returncode is not None)
    table = ip.run_line_magic("proctrack", "")
    text = repr(table)
    header, *rows = text.splitlines()
    assert header.split() == ["name", "pid", "state", "uptime", "procs", "CPU", "RSS", "ports",
                              "log"]
    srv = next(r for r in rows if r.startswith("srv"))
    port = int(re.search(r"port (\d+)", nb.get_process("srv").tail(5)).group(1))  # type: ignore[union-attr]
    assert "running · ready in" in srv and f"  {port}  " in srv and "MiB" in srv
    assert re.search(r"^done .* exited 0 ", text, re.M)
    html = table._repr_html_()
    assert html.count("<tr>") == 3 and "srv" in html and str(port) in html


def test_cleanup_states_escalations(ip: InteractiveShell) -> None:
    cell(ip, "stubborn", "trap '' TERM\nexec sleep 100\n")
    cell(ip, "easy", "exec sleep 100\n")
    stubborn = nb.get_process("stubborn")  # the trap is set once bash has exec'd sleep
    wait_for(lambda: any(i.command.startswith("sleep") for i in stubborn.tree()))
    view = ip.run_line_magic("proctrack_cleanup", "stubborn --grace 0.3")
    assert isinstance(view, CleanupView)
    text = repr(view)
    assert text.splitlines()[0].startswith("stubborn: 1 process(es), all gone")
    assert "SIGKILL" in text and "easy" not in text
    assert "<details>" in view._repr_html_() and "SIGKILL" in view._repr_html_()
    assert nb.get_process("easy").returncode is None
    verbose = repr(ip.run_line_magic("proctrack_cleanup", "-v"))
    assert "easy: 1 process(es), all gone" in verbose and "ended by" in verbose


# ----------------------------------------------------------------------------- config, load


def test_config_magic_and_limits(ip: InteractiveShell) -> None:
    session = nb.current_session()
    ip.run_line_magic("config", "ProcTrackConfig.grace = 1.25")
    ip.run_line_magic("config", "ProcTrackConfig.refresh_hz = 50")
    ip.run_line_magic("config", "ProcTrackConfig.tail_lines = 7")
    assert session.config.grace == 1.25
    assert session.config.refresh_hz == 5.0  # capped
    assert session.config.tail_lines == 7
    assert ip.run_line_magic("config", "ProcTrackConfig.grace") == 1.25
    for bad in (float("inf"), float("nan"), 601.0, -1.0):  # %config logs this TraitError
        with pytest.raises(TraitError, match="grace must be a number of seconds from 0 to 600"):
            session.config.grace = bad
    assert session.config.grace == 1.25
    for name, bad_value, least in (("tail_lines", 0, 1), ("log_max_bytes", -1, 0),
                                   ("log_budget_bytes", -1, 0), ("log_backups", -2, -1)):
        kept = getattr(session.config, name)
        with pytest.raises(TraitError, match=f"'{name}' .* not be less than {least}"):
            setattr(session.config, name, bad_value)
        assert getattr(session.config, name) == kept


def test_config_survives_reload_and_reads_shell_config(tmp_path: Path) -> None:
    shell = InteractiveShell.instance()
    nb._saved_settings.pop(shell, None)
    shell.config.ProcTrackConfig.log_dir = str(tmp_path / "logs")
    try:
        shell.run_line_magic("load_ext", "ipyproctrack")
        assert nb.current_session().config.log_dir == str(tmp_path / "logs")
        shell.run_line_magic("config", "ProcTrackConfig.grace = 0.75")
        shell.run_line_magic("reload_ext", "ipyproctrack")
        assert nb.current_session().config.grace == 0.75
        shell.run_line_magic("tracked", "-n logged echo hi")
        assert nb.get_process("logged").log_path.parent == tmp_path / "logs"
    finally:
        del shell.config.ProcTrackConfig
        shell.run_line_magic("unload_ext", "ipyproctrack")


def test_unload_tears_down_and_removes_the_magics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    shell = InteractiveShell.instance()
    nb._saved_settings.pop(shell, None)
    shell.run_line_magic("load_ext", "ipyproctrack")
    shell.run_line_magic("config", f"ProcTrackConfig.log_dir = {str(tmp_path / 'logs')!r}")
    shell.run_line_magic("tracked", "-n bye sleep 100")
    proc = nb.get_process("bye")
    ident = (proc.pid, proc.create_time)
    shell.run_line_magic("unload_ext", "ipyproctrack")
    assert not is_alive(*ident)
    assert "bye: 1 process(es), all gone" in capsys.readouterr().out
    assert call(shell.find_line_magic, "proctrack") is None
    assert call(shell.find_cell_magic, "tracked") is None
    with pytest.raises(RuntimeError, match="not loaded"):
        nb.current_tracker()
    shell.config.pop("ProcTrackConfig", None)  # leave no %config to later tests


def test_terminal_ipython_with_config_file(tmp_path: Path) -> None:
    """c.InteractiveShellApp.extensions and c.ProcTrackConfig in ipython_config.py work in
    terminal IPython, which has no widget frontend: a plain status line is printed."""
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "ipython_config.py").write_text(
        "c.InteractiveShellApp.extensions = ['ipyproctrack']\n"
        "c.ProcTrackConfig.grace = 0.25\n"
    )
    code = "\n".join(
        [
            "%tracked -n t1 echo from-t1",
            "import time; time.sleep(0.3)",
            "import ipyproctrack._notebook as nb",
            "print('grace', nb.current_session().config.grace)",
            "%proctrack_logs t1",
        ]
    )
    ipython = Path(sys.executable).with_name("ipython")
    out = subprocess.run(
        [str(ipython), f"--profile-dir={profile}", "--no-banner", "--colors=nocolor",
         "--HistoryManager.enabled=False", "-c", code],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TERM": "dumb", "TMPDIR": str(tmp_path)},  # its default logs
    )
    assert out.returncode == 0, out.stderr
    # the status line comes right after the launch; a quick echo may be done by then
    assert re.search(r"t1: pid \d+ (running|exited 0)", out.stdout), out.stdout
    assert "grace 0.25" in out.stdout and "from-t1" in out.stdout, out.stdout


# ----------------------------------------------------------------------------- widgets


@pytest.mark.parametrize(
    ("state", "colour"),
    [
        (ProcessState(Phase.STARTING), "#f9a825"),
        (ProcessState(Phase.RUNNING), "#2e7d32"),
        (ProcessState(Phase.READY, ready_seconds=0.42), "#2e7d32"),
        (ProcessState(Phase.STOPPED, -15), "#616161"),
        (ProcessState(Phase.EXITED, 0), "#616161"),
        (ProcessState(Phase.EXITED, 3), "#c62828"),
        (ProcessState(Phase.KILLED, -9), "#c62828"),
        (ProcessState(Phase.FAILED), "#c62828"),
    ],
)
def test_badge_colour_follows_the_phase(state: ProcessState, colour: str) -> None:
    badge = badge_html(state)
    assert f"background:{colour}" in badge and f">{state.describe()}</span>" in badge


def test_frontend_seam() -> None:
    assert not has_widget_frontend(InteractiveShell.instance())
    assert not has_widget_frontend(None)


TICKER = "exec python -u -c 'import itertools, time\nfor i in itertools.count():\n" \
         "    print(\"line\", i, flush=True); time.sleep(0.02)'\n"


def refresh(session: Any, widget: ProcessWidget) -> None:
    """What one refresher tick does for one widget: sample its tree, push what changed."""
    proc = widget.proc
    assert proc is not None
    exited = proc.returncode is not None
    widget.set_stats(proc, session.sample_trees([proc])[0], time.monotonic(), exited=exited)
    for part, value in widget.pending(time.monotonic()):
        widget.apply(part, value)


def test_widget_renders_state_tail_and_buttons(ip: InteractiveShell) -> None:
    session = nb.current_session()
    spec = LaunchSpec(command="echo out; echo err >&2; exec sleep 100", name="wid", grace=0.2)
    widget = ProcessWidget(session, spec)
    assert "starting…" in widget.header.value
    widget.attach(session.launch(spec))
    proc = widget.proc
    assert proc is not None
    wait_for(lambda: "err" in proc.tail(5))
    refresh(session, widget)
    assert f"pid {proc.pid}" in widget.header.value and "running" in widget.header.value
    assert "1 proc ·" in widget.header.value
    # stderr is marked and muted, never error-red (servers log to stderr as a rule)
    assert 'title="stderr"' in widget.tail.value and "#c62828" not in widget.tail.value
    assert f'{STDERR_STYLE}">err' in widget.tail.value and "out\n" in widget.tail.value
    assert not widget.stop_button.disabled
    assert repr(widget.view).startswith("wid: pid")

    widget._on_stop(widget.stop_button)  # the Stop button (runs on a helper thread)
    # stopped: the teardown began; the exit status may come a moment after the output's end
    wait_for(lambda: proc.stopped and proc.output_done and proc.returncode is not None)
    refresh(session, widget)
    assert "stopped" in widget.header.value and widget.stop_button.disabled
    assert "err" in widget.tail.value  # the last lines stay after the end
    assert widget.pending(time.monotonic()) == [] and widget.settled

    widget._on_restart(widget.restart_button)  # the Restart button
    wait_for(lambda: widget.proc is not proc and widget.phase == "attached")
    assert widget.proc is not None and widget.proc.returncode is None
    assert not widget.settled
    # both clicks ran on the session's one click worker: no thread per click
    names = [t.name for t in threading.enumerate()]
    assert names.count("ipyproctrack-clicks") == 1 and session.clicks.thread is not None
    assert not any(n.startswith(("ipyproctrack-stop", "ipyproctrack-restart")) for n in names)


class _Ended:
    """The engine's view of a process whose root exited and whose tree is gone while its
    last output is still on the way (the drain has not read EOF yet): a moment too short
    to catch with a real process, so the widget is shown this stand-in."""

    def __init__(self) -> None:
        self.name, self.pid, self.returncode, self.stopped = "ended", 4242, 0, False
        self.state = ProcessState(Phase.EXITED, 0)
        self.started_at, self.command, self.log_path = time.time(), "echo", Path("ended.log")
        self.log_error = None
        self.output_done, self.output_version = False, 1
        self.chunks = [("stdout", "first\n")]

    def tail_chunks(self, lines: int = 50, *, raw: bool = False) -> list[tuple[str, str]]:
        return list(self.chunks)

    def metrics(self) -> list[Any]:
        return []


def test_widget_settles_only_once_the_output_is_drained(ip: InteractiveShell) -> None:
    session = nb.current_session()
    widget = ProcessWidget(session, LaunchSpec(command="echo", name="ended"))
    proc: Any = _Ended()
    widget.attach(proc)
    widget.set_stats(proc, EMPTY_STATS, 0.0, exited=True)  # a sample after the exit: empty
    for _ in range(2):
        for part, value in widget.pending(time.monotonic()):
            widget.apply(part, value)
    assert "exited 0" in widget.header.value and "first" in widget.tail.value
    assert not widget.settled  # the last lines may still come
    proc.chunks.append(("stdout", "last words\n"))
    proc.output_version, proc.output_done = 2, True
    for part, value in widget.pending(time.monotonic()):
        widget.apply(part, value)
    assert "last words" in widget.tail.value
    assert widget.pending(time.monotonic()) == [] and widget.settled


@pytest.mark.perf
def test_refresher_budget_with_many_widgets(ip: InteractiveShell) -> None:
    """16 chatty widgets at 5 Hz want ~96 messages/s; the session sends at most its budget."""
    session = nb.current_session()
    ip.run_line_magic("config", "ProcTrackConfig.refresh_hz = 5")
    sent: list[float] = []
    widgets = []
    for i in range(16):
        spec = LaunchSpec(command=TICKER, name=f"chatty{i}")
        widget = ProcessWidget(session, spec)
        widget.attach(session.launch(spec))
        original = widget.apply

        def counting(part: str, value: Any, _orig: Any = original) -> None:
            sent.append(time.monotonic())
            _orig(part, value)

        widget.apply = counting  # type: ignore[method-assign]
        widgets.append(widget)
    for widget in widgets:
        session.add_widget(widget)
    time.sleep(3.0)
    session.refresher.stop()
    assert sent
    worst = max(sum(1 for t in sent if s <= t < s + 1.0) for s in sent)
    tails = [w._sent["tail"] for w in widgets]
    print(f"{len(sent)} messages in 3 s, worst 1 s window {worst}, "
          f"deferred {session.refresher.budget.deferred}")
    assert worst <= MESSAGE_BUDGET
    assert session.refresher.budget.deferred > 0  # the budget really was the limit
    assert all("line" in t for t in tails)  # oldest-first order: nobody starves


class _BrokenHost:
    """A session whose config cannot be read, so its widget's tail rendering raises on
    every tick: a stand-in for any bug in one widget."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.failures = 0

    @property
    def config(self) -> Any:
        self.failures += 1
        raise RuntimeError("broken host")

    def relaunch(self, spec: LaunchSpec, *, on_launched: Any = None) -> TrackedProcess:
        return cast(TrackedProcess, self.session.relaunch(spec, on_launched=on_launched))

    def stop_process(self, proc: TrackedProcess, grace: float | None) -> None:
        self.session.stop_process(proc, grace)

    def wake(self) -> None:
        self.session.wake()

    def submit(self, job: Any, what: str) -> bool:
        return bool(self.session.submit(job, what))


def test_refresher_reports_a_broken_widget_once_and_refreshes_the_others(
    ip: InteractiveShell, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ipyproctrack._notebook.refresher")
    session = nb.current_session()
    host = _BrokenHost(session)
    broken = ProcessWidget(host, LaunchSpec(command=TICKER, name="broken"))
    good = ProcessWidget(session, LaunchSpec(command=TICKER, name="good"))
    for widget in (broken, good):
        widget.attach(session.launch(widget.spec))
        session.add_widget(widget)  # the session's one refresher thread

    def errors() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno >= logging.ERROR]

    wait_for(lambda: errors() and "line" in good.tail.value)
    failures, tails = host.failures, {good.tail.value}
    # many more ticks: the broken widget fails on each, the good one shows new lines

    def more_ticks() -> bool:
        tails.add(good.tail.value)
        return len(tails) >= 4 and host.failures >= failures + 3

    wait_for(more_ticks)
    assert session.refresher._thread is not None and session.refresher._thread.is_alive()
    (record,) = errors()  # reported once, with its traceback
    assert "'broken'" in record.getMessage() and record.exc_info is not None
    assert "broken host" in str(record.exc_info[1])
    again = [r for r in caplog.records if "failed again" in r.getMessage()]
    assert len(again) >= 3 and all(r.levelno == logging.DEBUG for r in again)
    assert "line" not in broken.tail.value


def test_restart_builds_fresh_readiness_checks(ip: InteractiveShell) -> None:
    cell(ip, "banner --wait-output 'up and running' --timeout 10",
         "echo up and running; exec sleep 100\n")
    session = nb.current_session()
    spec = session.specs["banner"]
    fresh = spec.for_restart()
    assert fresh.ready and all(a is not b for a, b in zip(fresh.ready, spec.ready, strict=True))
    first = nb.get_process("banner")
    second = session.relaunch(spec)  # what the Restart button does
    assert second is not first and first.returncode is not None
    assert second.state.phase is Phase.READY and second.state.ready_seconds is not None


def test_refresher_scans_once_for_all_widgets(
    ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N widgets cost one process scan per sampling interval, not N."""
    session = nb.current_session()
    widgets = []
    for i in range(5):
        spec = LaunchSpec(command="exec sleep 100", name=f"quiet{i}")
        widget = ProcessWidget(session, spec)
        widget.attach(session.launch(spec))
        widgets.append(widget)
    tracker = session.tracker
    scans: list[int] = []
    own: list[str] = []
    real_trees, real_tree = tracker.trees, TrackedProcess.tree

    def counted_trees() -> Any:
        scans.append(1)
        return real_trees()

    def counted_tree(self: TrackedProcess) -> Any:
        own.append(self.name)
        return real_tree(self)

    monkeypatch.setattr(tracker, "trees", counted_trees)
    monkeypatch.setattr(TrackedProcess, "tree", counted_tree)
    refresher = Refresher(lambda: 5.0, session.sample_trees)
    refresher.stop()  # no thread: this test ticks by hand
    for widget in widgets:
        refresher.add(widget)
    assert refresher.tick() > 0
    assert (len(scans), own) == (1, [])
    assert all("1 proc ·" in w.header.value for w in widgets)
    refresher.tick()  # within the interval: no scan at all
    assert len(scans) == 1
    refresher.tick(force_stats=True)
    assert (len(scans), own) == (2, [])


def test_rerun_stops_the_old_tree_with_its_own_grace(ip: InteractiveShell) -> None:
    ip.run_line_magic("config", "ProcTrackConfig.grace = 30")
    cell(ip, "stub --grace 0.2", "trap '' TERM\nexec sleep 100\n")
    old = nb.get_process("stub")
    wait_for(lambda: any(i.command.startswith("sleep") for i in old.tree()))
    started = time.monotonic()
    cell(ip, "stub", "exec sleep 101\n")
    took = time.monotonic() - started
    assert old.returncode == -signal.SIGKILL and old.tree() == []
    assert took < 5, took  # the old cell's 0.2 s, not the configured 30 s
    assert nb.get_process("stub") is not old


def test_widget_never_stays_starting_after_an_unexpected_error(ip: InteractiveShell) -> None:
    session = nb.current_session()
    # 1. the engine refuses before anything runs: the widget says why
    bad = LaunchSpec(command="exec sleep 100", name="bad", ready=[object()])
    with pytest.raises(TypeError):
        session.launch_in_widget(bad)
    widget = session.refresher.widgets[-1]
    assert widget.phase == "failed" and widget.error.startswith("TypeError: ready=")
    assert repr(widget.view).startswith("bad: failed: TypeError")
    # 2. an exception during the readiness wait (a timer in user code, say): the process
    # runs on, and the widget shows it. The alarm goes off once the process exists, not
    # after a fixed time: on a loaded machine 0.5 s once ended the launch before that.
    def alarm(signum: int, frame: Any) -> None:
        raise RuntimeError("alarm went off")

    def alarm_once_launched() -> None:
        deadline = time.monotonic() + 30
        while session.launched("alarmed") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGALRM)  # this test's own process

    previous = signal.signal(signal.SIGALRM, alarm)
    timer = threading.Thread(target=alarm_once_launched, name="alarm")
    try:
        with closed_port() as port:
            spec = LaunchSpec(command="exec sleep 100", name="alarmed",
                              ready=[PortReady(port)], ready_timeout=20)
            timer.start()
            with pytest.raises(RuntimeError, match="alarm went off"):
                session.launch_in_widget(spec)
    finally:
        if timer.ident is not None:  # started
            timer.join()
        signal.signal(signal.SIGALRM, previous)
    widget = session.refresher.widgets[-1]
    proc = nb.get_process("alarmed")
    assert widget.phase == "attached" and widget.proc is proc and proc.returncode is None


def test_unload_shows_the_final_state_after_the_refresher_stopped(
    ip: InteractiveShell,
) -> None:
    session = nb.current_session()
    session.widgets_enabled = True  # ipywidgets works here with its dummy comms
    cell(ip, "fin", "echo bye-bye; exec sleep 100\n")
    widget = session.refresher.widgets[-1]
    proc = nb.get_process("fin")
    wait_for(lambda: "bye-bye" in proc.tail(5))
    ip.run_line_magic("unload_ext", "ipyproctrack")
    thread = session.refresher._thread
    assert thread is not None and not thread.is_alive()
    assert "stopped" in widget.header.value and "bye-bye" in widget.tail.value
    assert widget.stop_button.disabled and widget.restart_button.disabled
    # the widget stays on the page but lets go of the session, which holds the shell
    assert widget.host is not session and getattr(widget.host.config, "parent", None) is None
    assert not widget.restart_button._click_handlers.callbacks
    ip.run_line_magic("load_ext", "ipyproctrack")  # for the fixture's unload


@pytest.mark.perf
def test_kernel_end_teardown_is_bounded_without_threads(
    ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At interpreter shutdown no thread can bound the teardown: it bounds itself."""
    session = nb.current_session()
    ip.run_line_magic("config", "ProcTrackConfig.grace = 30")
    cell(ip, "stubborn", "trap '' TERM\nexec sleep 100\n")
    proc = nb.get_process("stubborn")
    wait_for(lambda: any(i.command.startswith("sleep") for i in proc.tree()))

    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    no_threads = types.SimpleNamespace(**{**vars(threading), "Thread": no_thread})
    monkeypatch.setattr(hooks, "threading", no_threads)
    started = time.monotonic()
    session.hooks._on_atexit()
    took = time.monotonic() - started
    assert took < 2.0, took
    assert proc.returncode == -signal.SIGKILL and proc.tree() == []
    record = (proc.tracker.log_dir / session_module.KERNEL_END_RECORD).read_text()
    assert record.startswith("kernel end by atexit (inline): teardown took"), record
    assert "stubborn: 1 process(es), all gone" in record, record

