"""The magics: thin. Parse the arguments, call the engine, render.

Every user mistake (bad argument, empty cell, unknown name, ``KEY=VALUE`` without ``=``,
an engine ``ProcTrackError``) becomes a one-line ``UsageError``: never a traceback. A
readiness failure becomes a ``UsageError`` too, carrying the engine's message with the
process's last output lines.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import re
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from IPython.core import magic_arguments as _ipy_magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from ipyproctrack._engine.limits import parse_runtime, parse_size
from ipyproctrack._engine.naming import base_name
from ipyproctrack._engine.ready import HttpReady, OutputReady, PortReady
from ipyproctrack._engine.ready.checks import PORT_FIELD
from ipyproctrack.errors import NotReadyError, ProcTrackError

from .completion import run_to_completion
from .config import grace_problem
from .engines import engine_id, label_lines, on_engine
from .links import port_url
from .spec import LaunchSpec
from .views import CleanupView, LogsView, ProcessTable, first_line, status_line

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ipyproctrack import TrackedProcess

    from .session import NotebookSession

__all__ = ["ProcTrackMagics", "WaitInterrupted", "parse_env"]

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# One shell word, quotes kept, at a position (for splitting off leading options).
_WORD = re.compile(r"""\s*((?:[^\s'"\\]+|'[^']*'|"(?:\\.|[^"\\])*"|\\.)+)""")


# ----------------------------------------------------------------------------- typing
# IPython's magic_arguments is untyped; give its three entry points their real types.

_F = TypeVar("_F", bound=Callable[..., Any])
_V = TypeVar("_V")


class _Decorator(Protocol):
    def __call__(self, fn: _F, /) -> _F: ...


magic_arguments: Callable[[], _Decorator] = _ipy_magic_arguments.magic_arguments
argument: Callable[..., _Decorator] = _ipy_magic_arguments.argument


def _parser(magic: str) -> Any:
    """The MagicArgumentParser that magic_arguments attached to a ProcTrackMagics method."""
    return ProcTrackMagics.__dict__[magic].parser


def _parse(magic: str, line: str) -> argparse.Namespace:
    """Parse a magic's arguments with POSIX quoting (IPython's own split keeps quotes)."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot split the arguments: {exc}") from None
    result: argparse.Namespace = _parser(magic).parse_args(argv)
    return result


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _usage_errors(*, launching: bool = False) -> Iterator[None]:
    """Engine errors become UsageErrors: one line, or the readiness message with its tail.
    ``launching``: a ValueError (say, a NUL byte in an argument) is the user's too."""
    try:
        yield
    except UsageError:
        raise
    except NotReadyError as exc:
        raise UsageError(str(exc).rstrip()) from None
    except ProcTrackError as exc:
        raise UsageError(first_line(exc)) from None
    except ValueError as exc:
        if not launching:
            raise
        raise UsageError(first_line(exc)) from None


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``; a UsageError otherwise."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env expects KEY=VALUE, got {item!r} (no '=')")
        if not _ENV_KEY.match(key):
            raise UsageError(f"--env {item!r}: {key!r} is not a valid variable name")
        env[key] = value
    return env


def _readiness(args: argparse.Namespace) -> list[Any]:
    wants = [args.wait_port is not None, bool(args.wait_http), bool(args.wait_output)]
    if not any(wants):
        if args.timeout is not None and not args.wait_exit:
            raise UsageError("--timeout needs --wait-port, --wait-http, --wait-output "
                             "or --wait-exit")
        return []
    checks: list[Any] = []
    if args.wait_port is not None:
        checks.append(_port_check(args.wait_port))
    if args.wait_http:
        try:
            checks.append(HttpReady(args.wait_http))
        except ValueError as exc:
            raise UsageError(f"--wait-http: {first_line(exc)}") from None
    if args.wait_output:
        try:
            re.compile(args.wait_output)
        except re.error as exc:
            raise UsageError(f"--wait-output: bad regular expression: {exc}") from None
        checks.append(OutputReady(args.wait_output))
    return checks


def _port_check(value: str) -> PortReady:
    """``--wait-port P`` or ``--wait-port {port}`` (the port of ``--port``)."""
    if value == PORT_FIELD:
        return PortReady(PORT_FIELD)
    try:
        port = int(value)
    except ValueError:
        raise UsageError(f"--wait-port must be 1-65535 or {PORT_FIELD}, not {value!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"--wait-port must be 1-65535, not {port}")
    return PortReady(port)


def _port_option(value: str | None) -> int | str | None:
    """``--port auto`` or ``--port N``."""
    if value is None or value == "auto":
        return value
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise UsageError(f"--port must be auto or 1-65535, not {value!r}")
    return port


def _check_grace(value: float | None) -> None:
    problem = None if value is None else grace_problem(value)
    if problem is not None:
        raise UsageError(f"--grace {problem}")


def _check_timeout(value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):  # NaN, inf too
        raise UsageError(f"--timeout must be a finite number of seconds > 0, not {value:g}")


def _checked_limit(parse: Callable[[Any], object], value: _V, option: str) -> _V:
    """``value`` when the engine accepts it as a limit (checked before anything runs)."""
    try:
        parse(value)
    except ProcTrackError as exc:
        raise UsageError(f"{option}: {first_line(exc)}") from None
    return value


def _checked_cwd(option_value: str) -> str:
    try:
        cwd = Path(option_value).expanduser()
    except RuntimeError as exc:  # "~nosuchuser/dir": the home directory cannot be found
        raise UsageError(f"--cwd: {first_line(exc)}: {option_value}") from None
    if not cwd.is_dir():
        raise UsageError(f"--cwd: not a directory: {option_value}")
    return str(cwd)


def _split_leading_options(line: str, parser: argparse.ArgumentParser) -> tuple[list[str], str]:
    """Split ``-n web --cwd /tmp python -m x`` into option words and the raw command.

    The command keeps its quoting (it goes to the shell as written). Options end at the
    first word that is not one of ours, or at ``--``.
    """
    options: list[str] = []
    pos = 0
    need_value = False
    while True:
        match = _WORD.match(line, pos)
        if match is None:
            break
        raw = match.group(1)
        try:
            word = shlex.split(raw)[0] if raw else raw
        except (ValueError, IndexError):
            word = raw
        if need_value:
            options.append(word)
            pos = match.end()
            need_value = False
            continue
        if word == "--":
            pos = match.end()
            break
        if not word.startswith("-") or word == "-":
            break
        flag = word.split("=", 1)[0]
        action = parser._option_string_actions.get(flag)
        if action is None:
            raise UsageError(f"unknown option {flag!r} (see %tracked?)")
        options.append(word)
        pos = match.end()
        need_value = action.nargs != 0 and "=" not in word
    if need_value:
        raise UsageError(f"option {options[-1]!r} needs a value")
    return options, line[pos:].strip()


def _cell_args(line: str, cell: str | None) -> tuple[argparse.Namespace, str | None, str]:
    """The options, the name (None: generate one) and the script of a %%tracked cell or
    a %tracked line."""
    parser = _parser("tracked")
    if cell is None:
        option_words, command = _split_leading_options(line, parser)
        args = parser.parse_args(option_words)
        if not command:
            raise UsageError("%tracked needs a command after the options, e.g. "
                             "%tracked -n web python -m http.server 8000")
        return args, args.name, command
    args = _parse("tracked", line)
    if len(args.name_or_command) > 1:
        raise UsageError(
            f"%%tracked takes one NAME, got {' '.join(args.name_or_command)!r} "
            "(the script goes in the cell body)"
        )
    positional = args.name_or_command[0] if args.name_or_command else None
    if positional and args.name and positional != args.name:
        raise UsageError("give the name once: either NAME or --name NAME")
    if not cell.strip():
        raise UsageError("%%tracked needs a shell script in the cell body")
    return args, positional or args.name, cell


def _launch_spec(
    line: str, cell: str | None, *, free_name: Callable[[str], str]
) -> tuple[LaunchSpec, argparse.Namespace]:
    """The checked launch of a %%tracked cell, and its options (--no-widget, --wait-exit).
    ``free_name`` turns the script's base name into the name of an unnamed launch."""
    args, name, script = _cell_args(line, cell)
    if name is not None and (not name.strip() or any(c.isspace() for c in name)):
        raise UsageError(f"bad name {name!r}: use letters, digits, '.', '_' or '-'")
    if name is not None and "=" in name:  # `--env A=1 B=2` (one KEY=VALUE per --env)
        raise UsageError(f"bad name {name!r}: give one KEY=VALUE per --env")
    env = parse_env(args.env)
    _check_grace(args.grace)
    _check_timeout(args.timeout)
    checks = _readiness(args)
    port = _port_option(args.port)
    if port is None and any(getattr(c, "needs_port", False) for c in checks):
        raise UsageError(f"{PORT_FIELD} in a --wait-* option needs --port auto or --port N")
    spec = LaunchSpec(
        command=script,
        name=name if name is not None else free_name(base_name(script)),
        cwd=_checked_cwd(args.cwd) if args.cwd else None,
        env=env or None,
        grace=args.grace,
        ready=checks,
        ready_timeout=30.0 if args.timeout is None else args.timeout,
        make_ready=functools.partial(_readiness, args),
        port=port,
        max_memory=_checked_limit(parse_size, args.max_memory, "--max-memory"),
        max_runtime=_checked_limit(parse_runtime, args.max_runtime, "--max-runtime"),
    )
    return spec, args


class WaitInterrupted(KeyboardInterrupt):
    """"Interrupt kernel" during a launch: the cell stops (so "Run all" stops too), and
    IPython shows this one line instead of a traceback through threading internals."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def _interrupted(
    name: str, before: TrackedProcess | None, now: TrackedProcess | None
) -> WaitInterrupted:
    """What an interrupted launch of ``name`` says: whether its process runs on."""
    if now is not None and now is not before and now.returncode is None:
        return WaitInterrupted(f"stopped waiting for {name}; it is still running "
                               f"(pid {now.pid}); %proctrack_cleanup {name} stops it")
    return WaitInterrupted(f"interrupted before {name} started")


# ----------------------------------------------------------------------------- magics


@magics_class
class ProcTrackMagics(Magics):
    """``%%tracked``, ``%tracked``, ``%proctrack``, ``%proctrack_cleanup``,
    ``%proctrack_logs``."""

    def __init__(self, shell: InteractiveShell, session: NotebookSession) -> None:
        super().__init__(shell)
        self.session = session

    # ------------------------------------------------------------------ %%tracked

    @magic_arguments()
    @argument(
        "name_or_command", nargs="*", metavar="NAME | COMMAND",
        help="%%%%tracked: the NAME of the process (generated from the script if left out). "
        "%%tracked: the one-line COMMAND to run, after the options.",
    )
    @argument("-n", "--name", help="name of the tracked process (line form)")
    @argument("--cwd", metavar="DIR", help="working directory (default: the kernel's)")
    @argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="an extra environment variable; repeat the option for more "
        "(--env A=1 --env B=2)",
    )
    @argument(
        "--grace", type=float, metavar="S",
        help="seconds between SIGTERM and SIGKILL when this process is stopped, restarted "
        "or replaced (default: ProcTrackConfig.grace)",
    )
    @argument("--no-widget", action="store_true", help="print a status line instead of a widget")
    @argument(
        "--port", metavar="auto|N",
        help="a port for the process: 'auto' picks a free 127.0.0.1 port; it is $PORT in "
        "its environment and replaces {port} in the command and the --wait-* values",
    )
    @argument(
        "--max-memory", metavar="SIZE",
        help="tear the tree down when its RSS passes SIZE (512M, 1G, or bytes); the "
        "keeper watches, also while the kernel is busy",
    )
    @argument("--max-runtime", type=float, metavar="S",
              help="tear the tree down after S seconds of wall-clock time")
    @argument("--wait-port", metavar="P", help="block until 127.0.0.1:P accepts TCP")
    @argument("--wait-http", metavar="URL", help="block until URL answers with 2xx or 3xx")
    @argument("--wait-output", metavar="REGEX", help="block until the output matches REGEX")
    @argument(
        "--wait-exit", action="store_true",
        help="block until the process exits, then show its return code and last lines",
    )
    @argument(
        "--timeout", type=float, metavar="S",
        help="seconds to wait for readiness (default 30) or, with --wait-exit, for the exit "
        "(default: no limit); on timeout the tree is torn down",
    )
    @line_cell_magic
    def tracked(self, line: str, cell: str | None = None) -> None:
        """Run a shell script (cell) or a command (line) in the background, tracked.

        Cell form::

            %%tracked [NAME] [--cwd DIR] [--env KEY=VALUE]... [--grace S] [--no-widget]
                      [--port auto|N] [--max-memory SIZE] [--max-runtime S]
                      [--wait-port P | --wait-http URL | --wait-output REGEX]
                      [--wait-exit] [--timeout S]
            python -m http.server 8000 --bind 127.0.0.1

        Line form (options first, then the command as the shell should see it)::

            %tracked [-n NAME] [options] COMMAND ...

        The process runs in its own session, so "Interrupt kernel" never stops it, and its
        whole tree is torn down by %proctrack_cleanup, %unload_ext and every kernel ending.
        Running a cell again while NAME is alive stops the old tree, then starts the new
        one. With a --wait-* option the cell blocks until the server is ready; with
        --wait-exit, until the process exits (a load generator's run, say). "Interrupt
        kernel" stops a wait (in one line), never the process.
        """
        session = self.session
        spec, args = _launch_spec(line, cell, free_name=session.free_name)
        before = session.launched(spec.name)
        engine = engine_id(self.shell)  # on an ipyparallel engine: "[engine N] " each line
        try:
            if session.widgets_enabled and not args.no_widget:
                with _usage_errors(launching=True):
                    proc = session.launch_in_widget(spec)
            else:
                if spec.ready:
                    waiting = f"{spec.name}: starting, waiting for {spec.describe_ready()}…"
                    print(label_lines(waiting, engine), flush=True)
                with _usage_errors(launching=True):
                    proc = session.launch(spec)
                if not args.wait_exit:
                    print(label_lines(status_line(proc), engine), flush=True)
            if args.wait_exit:
                run_to_completion(proc, timeout=args.timeout)
        except KeyboardInterrupt:
            raise _interrupted(spec.name, before, session.launched(spec.name)) from None

    # ------------------------------------------------------------------ %proctrack

    @magic_arguments()
    @line_magic
    def proctrack(self, line: str) -> object:
        """List the tracked processes: name, pid, state, uptime, processes in the tree,
        CPU% and RSS of the whole tree, listening TCP ports, log path.

        Shows an HTML table in notebooks and text in terminals.
        """
        _parse("proctrack", line)
        session = self.session
        if not session.has_tracker:
            return on_engine(ProcessTable([], [], now=0.0), self.shell)
        procs = session.tracker.processes()
        stats = session.sample_trees(procs, wait=0.1)
        link = functools.partial(port_url, proxy_url=session.config.proxy_url)
        return on_engine(ProcessTable(procs, stats, now=time.time(), link=link), self.shell)

    # ------------------------------------------------------------------ %proctrack_cleanup

    @magic_arguments()
    @argument("names", nargs="*", metavar="NAME", help="tracked names (default: all)")
    @argument(
        "--grace", type=float, metavar="S",
        help="seconds between SIGTERM and SIGKILL (default: ProcTrackConfig.grace)",
    )
    @argument("-v", "--verbose", action="store_true", help="show every process's outcome")
    @line_magic
    def proctrack_cleanup(self, line: str) -> object:
        """Phased teardown (SIGTERM, wait, SIGKILL, sweep) of the named trees, or of all.

        Shows one line per tree with escalations stated, and the details on demand.
        """
        args = _parse("proctrack_cleanup", line)
        _check_grace(args.grace)
        session = self.session
        if not session.has_tracker:
            if args.names:
                raise UsageError(f"no tracked process named {args.names[0]!r} (known: none)")
            return on_engine(CleanupView(None), self.shell)
        tracker = session.tracker
        for name in args.names:
            if name not in tracker:
                with _usage_errors():
                    tracker.get(name)  # raises UnknownProcessError with the known names
        report = tracker.cleanup(*args.names, grace=session.grace(args.grace))
        return on_engine(CleanupView(report, verbose=args.verbose), self.shell)

    # ------------------------------------------------------------------ %proctrack_logs

    @magic_arguments()
    @argument("name", metavar="NAME", help="the tracked process")
    @argument("--tail", type=int, default=50, metavar="N", help="lines to show (default 50)")
    @line_magic
    def proctrack_logs(self, line: str) -> LogsView:
        """Show the last N lines of a tracked process's output and the path of its full log."""
        args = _parse("proctrack_logs", line)
        if args.tail < 1:
            raise UsageError(f"--tail must be >= 1, not {args.tail}")
        session = self.session
        if not session.has_tracker:
            raise UsageError(f"no tracked process named {args.name!r} (known: none)")
        with _usage_errors():
            proc: TrackedProcess = session.tracker.get(args.name)
        return LogsView(proc, args.tail)
