"""Names: readable generated names for tracked processes (``python-1``, ``node-2``) and
the file names their logs get.

One rule for the engine (``Tracker.start(name=None)``) and the magics (which name a cell
before they launch it, to show its widget)."""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Container, Sequence
from itertools import count
from pathlib import Path

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
# Letters of any script stay readable in log names; anything else becomes "_".
_FILE_CHARS = re.compile(r"[^\w.-]+")
_STEM_BYTES = 64
# Lines that set a script up rather than run its main command.
_SETUP_WORDS = frozenset(
    {
        "set", "cd", "pushd", "popd", "export", "source", ".", "trap", "ulimit", "umask",
        "unset", "shopt", "alias", "declare", "local", "readonly", "echo", "printf", "true",
        ":", "sleep", "wait", "mkdir", "rm", "cp", "mv", "touch",
    }
)
# Words that run the next word: the name comes from what they run.
_WRAPPERS = frozenset(
    {
        "exec", "env", "nohup", "time", "command", "stdbuf", "nice", "ionice", "setsid",
        "timeout", "sudo", "uv", "poetry",
    }
)
_RUNNERS = {"uv": "run", "poetry": "run"}


def base_name(command: str | Sequence[str]) -> str:
    """The readable part of a generated name: a shell script's main command, or the
    program of an argument list."""
    if isinstance(command, str):
        return _script_base(command)
    return _script_base(shlex.join(command[:1])) if command else "proc"


def free_name(base: str, taken: Container[str]) -> str:
    """``base-1``, ``base-2``...: the first one not taken."""
    for n in count(1):
        if f"{base}-{n}" not in taken:
            return f"{base}-{n}"
    raise AssertionError("unreachable")  # pragma: no cover


def log_stem(name: str, *, digits: int = 8) -> str:
    """A file name (without ``.log``) for the log of ``name``: readable, safe, at most
    about 80 bytes, and distinct for distinct names (a hash of the name ends it):
    ``my server`` -> ``my_server-1f2e3d4c``, ``сервер-😀`` -> ``сервер-_-9a8b7c6d``."""
    readable = _FILE_CHARS.sub("_", name).lstrip(".") or "_"
    cut = readable.encode("utf-8", "surrogatepass")[:_STEM_BYTES]
    readable = cut.decode("utf-8", "ignore")
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{readable}-{digest[:digits]}"


def _script_base(script: str) -> str:
    """A readable base name from a script's main command: ``python -m http.server`` ->
    ``python``; comments, ``set -e``, ``cd`` lines and ``FOO=1``/``exec``/``env``
    prefixes are skipped."""
    fallback = ""
    for raw in script.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        # `cd dir && python x.py`: look at the last command of an && / ; chain
        for sep in ("&&", ";", "||"):
            if sep in words:
                words = words[len(words) - words[::-1].index(sep):]
        while words:
            word = words[0]
            if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", word):
                words = words[1:]
            elif word in _WRAPPERS:
                runner = _RUNNERS.get(word)
                words = words[1:]
                if runner and words and words[0] == runner:
                    words = words[1:]
                while words and words[0].startswith("-"):
                    words = words[1:]
                if word == "timeout" and words:
                    words = words[1:]
            else:
                break
        if not words:
            continue
        base = _NAME_CHARS.sub("", Path(words[0]).name).strip(".-") or ""
        if not base:
            continue
        if base in _SETUP_WORDS:
            fallback = fallback or base
            continue
        return base[:32]
    return (fallback or "cell")[:32]
