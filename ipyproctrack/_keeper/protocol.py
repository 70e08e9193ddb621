"""The keeper's wire protocol, shared by both sides: its config and its status events.

Both are flat records of ``key=value`` fields separated by tabs (values escape ``\\``,
tab and newline), decoded against a schema of field types. Not JSON: importing ``json``
(and ``re`` with it) was a large share of the keeper's start-up, paid on every launch.

Config (one argument): argv (repeated, in order), lifeline_fd, status_fd, kernel_pid,
kernel_start (its start in seconds since boot; 0.0 unknown: no identity check), grace,
subreaper, tag, session, name (the tracked name, for reports), record (a file the keeper
appends its teardown report to when the kernel is gone; empty: none), max_memory (bytes
of the whole tree's RSS; 0: no limit), max_runtime (seconds of wall-clock time; 0: none),
pump (three descriptors, repeated: the read ends of stdout and stderr and a socket; the
keeper then writes the log: ``pump.py``).

Status events, one record per line on ``status_fd``:
    event=started pid=<command pid> start_time=<s since boot, 0.0 unknown> subreaper=<bool>
    event=error errno=<n> message=<strerror>   the command did not start; the keeper exits
                                               127 (errno ESRCH, exit 1: the kernel was
                                               already gone)
    event=exited returncode=<rc>               the command ended; rc < 0 is a signal, as
                                               with Popen.returncode
    event=teardown reason=lifeline|kernel      the kernel is gone
    event=limit_exceeded limit=memory|runtime used=<bytes|s> allowed=<bytes|s> message=<text>
                                               a limit was exceeded: the keeper tears the
                                               tree down now (its "exited" follows)
    event=teardown_done seconds=<s>
    event=keeper_error message=<text>          a bug in the keeper; it tore down
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    Record = dict[str, object]

MAX_LINE = 1 << 16  # a status line is tens of bytes; anything longer is garbage

CONFIG_FIELDS: dict[str, type] = {
    "argv": list,
    "lifeline_fd": int,
    "status_fd": int,
    "kernel_pid": int,
    "kernel_start": float,
    "grace": float,
    "subreaper": bool,
    "tag": str,
    "session": str,
    "name": str,
    "record": str,
    "max_memory": int,
    "max_runtime": float,
    "pump": list,
}
# A launch request to the zygote (``zygote.py``): the config, the working directory, the
# environment (one "KEY=value" item per variable), the umask and the resource limits (one
# "number=soft,hard" item each).
REQUEST_FIELDS: dict[str, type] = {**CONFIG_FIELDS, "cwd": str, "env": list, "umask": int,
                                   "rlimits": list}
EVENT_FIELDS: dict[str, type] = {
    "event": str,
    "pid": int,
    "start_time": float,
    "subreaper": bool,
    "errno": int,
    "message": str,
    "returncode": int,
    "reason": str,
    "seconds": float,
    "limit": str,
    "used": float,
    "allowed": float,
}
_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n"}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append(_ESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return _escape(str(value))


def encode(record: Mapping[str, object]) -> str:
    """One record as text (no newline). A list value becomes one field per item."""
    fields = []
    for key, value in record.items():
        items = value if isinstance(value, list | tuple) else (value,)
        fields += [f"{key}={_text(item)}" for item in items]
    return "\t".join(fields)


def _convert(kind: type, text: str) -> object:
    if kind is bool:
        return text == "1"
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return _unescape(text)


def decode(text: str, schema: Mapping[str, type]) -> Record:
    """A record from ``encode``: known keys only, each converted to its schema type;
    a field that does not convert is left out."""
    out: Record = {}
    for field in text.split("\t"):
        key, sep, value = field.partition("=")
        kind = schema.get(key)
        if not sep or kind is None:
            continue
        if kind is list:
            items = out.setdefault(key, [])
            assert isinstance(items, list)
            items.append(_unescape(value))
            continue
        try:
            out[key] = _convert(kind, value)
        except ValueError:
            continue
    return out


def encode_event(event: Mapping[str, object]) -> bytes:
    return (encode(event) + "\n").encode("utf-8", "replace")


def read_status_events(buf: bytearray, data: bytes) -> list[Record]:
    """Feed ``data`` read from a status pipe; return the complete events it finished.

    ``buf`` keeps a partial last line between calls. Lines without an ``event`` field are
    skipped, and a runaway partial line is dropped rather than kept growing.
    """
    buf += data
    end = buf.rfind(b"\n")
    if end < 0:
        if len(buf) > MAX_LINE:
            del buf[:]
        return []
    lines = bytes(buf[:end]).split(b"\n")
    del buf[: end + 1]
    events = (decode(line.decode("utf-8", "replace"), EVENT_FIELDS) for line in lines)
    return [e for e in events if isinstance(e.get("event"), str)]


def config_arg(config: Mapping[str, object]) -> str:
    return encode(config)


def read_config(arg: str) -> Record:
    return decode(arg, CONFIG_FIELDS)


def read_request(text: str) -> Record:
    return decode(text, REQUEST_FIELDS)

