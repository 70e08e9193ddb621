"""The magics in an in-process IPython shell: argument handling, rendering, config, budget.

No kernel here, so the shell has no widget frontend and the magics print status lines;
the widget tests build real widgets (ipywidgets falls back to dummy comms) on real
processes. The kernel-level behaviour is in test_kernel.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _procs import is_alive, wait_dead
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import ipyproctrack._notebook as nb
from ipyproctrack._notebook.magics import generate_base_name, parse_env
from ipyproctrack._notebook.render import CleanupView, LogsView, ProcessTable
from ipyproctrack._notebook.widgets import LaunchSpec, ProcessWidget, has_widget_frontend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    nb._configs.pop(id(shell), None)  # a fresh ProcTrackConfig for every test
    shell.run_line_magic("load_ext", "ipyproctrack")
    shell.run_line_magic("config", "ProcTrackConfig.grace = 0.5")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "ipyproctrack")


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
    ("x --grace -1", "sleep 1", "--grace must be >= 0"),
    ("x --grace abc", "sleep 1", "invalid float value"),
    ("x --cwd /nonexistent/dir", "sleep 1", "not a directory"),
    ("x --timeout 5", "sleep 1", "--timeout needs --wait-port"),
    ("x --wait-port 70000", "sleep 1", "1-65535"),
    ("x --wait-http ftp://host/", "sleep 1", "--wait-http"),
    ("x --wait-output (", "sleep 1", "bad regular expression"),
    ("x --wait-port 9 --timeout 0", "sleep 1", "--timeout must be > 0"),
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
    ("proctrack_cleanup", "--grace -2", "--grace must be >= 0"),
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
    assert generate_base_name(script) == base


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
    cell(ip, f"w --cwd {tmp_path} --env A=1 B=2 --env C=3",
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
    assert "running (ready in" in srv and f"  {port}  " in srv and "MiB" in srv
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


def test_config_survives_reload_and_reads_shell_config(tmp_path: Path) -> None:
    shell = InteractiveShell.instance()
    nb._configs.pop(id(shell), None)
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
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipyproctrack")
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
        capture_output=True, text=True, timeout=60, env={**os.environ, "TERM": "dumb"},
    )
    assert out.returncode == 0, out.stderr
    # the status line comes right after the launch; a quick echo may be done by then
    assert re.search(r"t1: pid \d+ (running|exited 0)", out.stdout), out.stdout
    assert "grace 0.25" in out.stdout and "from-t1" in out.stdout, out.stdout


# ----------------------------------------------------------------------------- widgets


def test_frontend_seam() -> None:
    assert not has_widget_frontend(InteractiveShell.instance())
    assert not has_widget_frontend(None)


TICKER = "exec python -u -c 'import itertools, time\nfor i in itertools.count():\n" \
         "    print(\"line\", i, flush=True); time.sleep(0.02)'\n"


def test_widget_renders_state_tail_and_buttons(ip: InteractiveShell) -> None:
    session = nb.current_session()
    spec = LaunchSpec(command="echo out; echo err >&2; exec sleep 100", name="wid", grace=0.2)
    widget = ProcessWidget(session, spec)
    assert "starting…" in widget.header.value
    widget.attach(session.launch(spec))
    proc = widget.proc
    assert proc is not None
    wait_for(lambda: "err" in proc.tail(5))
    for part, value in widget.pending(time.monotonic()):
        widget.apply(part, value)
    assert f"pid {proc.pid}" in widget.header.value and "running" in widget.header.value
    assert 'color:#c62828">err' in widget.tail.value and "out\n" in widget.tail.value
    assert not widget.stop_button.disabled
    assert repr(widget.view).startswith("wid: pid")

    widget._on_stop(widget.stop_button)  # the Stop button (runs on a helper thread)
    wait_for(lambda: proc.returncode is not None)
    time.sleep(0.05)
    widget._stats_at = -1e9
    for part, value in widget.pending(time.monotonic()):
        widget.apply(part, value)
    assert "stopped" in widget.header.value and widget.stop_button.disabled
    assert "err" in widget.tail.value  # the last lines stay after the end

    widget._on_restart(widget.restart_button)  # the Restart button
    wait_for(lambda: widget.proc is not proc and widget.phase == "attached")
    assert widget.proc is not None and widget.proc.returncode is None
    widget.close()


def test_refresher_budget_with_many_widgets(ip: InteractiveShell) -> None:
    """16 chatty widgets at 5 Hz want ~96 messages/s; the session sends at most 40."""
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
    assert worst <= 40
    assert session.refresher.budget.deferred > 0  # the budget really was the limit
    assert all("line" in t for t in tails)  # oldest-first order: nobody starves


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
    assert second.ready_state == "ready" and second.ready_seconds is not None
