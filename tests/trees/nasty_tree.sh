#!/usr/bin/env bash
# The "nasty tree" of issue 2 / design.md: 64 processes (65 with NASTY_ENV_I=1), built to
# escape a naive cleanup. Run it as the tracked command:
#
#     NASTY_PIDFILE=/tmp/x/nasty.pids bash tests/trees/nasty_tree.sh
#
# Every process appends one line "ROLE PID" to $NASTY_PIDFILE (each writes its own pid, so
# the pid is right even after exec and double forks). Once all lines are there, the root
# writes "READY" to "$NASTY_PIDFILE.ready" (or "INCOMPLETE n/N" after 30 s) and waits.
#
#   role            count  what it is
#   root                1  this script ($$), waits for its children
#   server              1  bash that starts the grandchild, then execs a sleeping python3
#   grandchild          1  backgrounded by the server: `sleep`
#   ignorer             1  ignores SIGTERM, SIGINT and SIGHUP (trap '' then exec sleep;
#                          ignored dispositions survive exec, so only SIGKILL ends it)
#   daemon              1  double-forked, setsid, keeps its environment (so its tag); stdio
#                          on /dev/null like a real daemon; out of the tree and the group
#   chain-1..15        15  a chain 15 processes deep (each level a bash; the last a sleep)
#   fanout              1  bash parent of the fan-out
#   fan-1..40          40  the fan-out: 40 sleeping children of `fanout`
#   zombie-parent       1  python3 that forks a child that exits, and never reaps it
#   zombie              1  that exited child (a zombie while its parent lives)
#   writer              1  python3 writing ~1 MB/s to stdout: 64 KiB of lines every 1/16 s
#   daemon-env-i      (1)  only with NASTY_ENV_I=1: like `daemon`, but started under
#                          `env -i`, so it carries no tag at all
#
# Environment: NASTY_PIDFILE (required), NASTY_ENV_I=1 (optional), NASTY_PYTHON (the
# python3 to use; default `python3`). Needs bash, python3 and sleep; no setsid(1) needed.
set -u

PF="${NASTY_PIDFILE:?set NASTY_PIDFILE to the pid file path}"
PY="$(command -v "${NASTY_PYTHON:-python3}")" || { echo "nasty_tree.sh: no python3" >&2; exit 2; }
SELF="${BASH_SOURCE[0]}"
LONG=1000000

record() { echo "$1 $2" >>"$PF"; }

# A double-forked daemon: fork, setsid, fork again, write its own pid, exec sleep.
# argv: ROLE PIDFILE SLEEP_SECONDS
DAEMON_PY='
import os, sys
role, pidfile, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
fd = os.open(os.devnull, os.O_RDWR)
for std in (0, 1, 2):
    os.dup2(fd, std)
with open(pidfile, "a") as f:
    f.write(f"{role} {os.getpid()}\n")
os.execvp("sleep", ["sleep", seconds])
'

ZOMBIE_PY='
import os, sys, time
pidfile = sys.argv[1]
child = os.fork()
if child == 0:
    os._exit(0)
with open(pidfile, "a") as f:
    f.write(f"zombie-parent {os.getpid()}\nzombie {child}\n")
while True:  # never waits for the child
    time.sleep(3600)
'

WRITER_PY='
import sys, time
out = sys.stdout.buffer
n = 0
while True:
    lines = []
    for _ in range(1024):  # 1024 lines of 64 bytes = 64 KiB
        n += 1
        lines.append(b"writer line %012d " % n + b"x" * 45 + b"\n")
    out.write(b"".join(lines))
    out.flush()
    time.sleep(1 / 16)
'

SERVER_PY='import time
while True:
    time.sleep(3600)
'

case "${1:-root}" in
server)
    record server $$
    sleep "$LONG" &
    record grandchild $!
    exec "$PY" -c "$SERVER_PY"
    ;;
ignorer)
    trap '' TERM INT HUP
    record ignorer $$
    exec sleep "$LONG"
    ;;
chain)
    depth="$2"
    record "chain-$depth" $$
    if [ "$depth" -ge 15 ]; then
        exec sleep "$LONG"
    fi
    bash "$SELF" chain $((depth + 1)) &
    wait
    exit
    ;;
fanout)
    record fanout $$
    for i in {1..40}; do
        sleep "$LONG" &
        record "fan-$i" $!
    done
    wait
    exit
    ;;
root) ;;
*)
    echo "nasty_tree.sh: unknown role $1" >&2
    exit 2
    ;;
esac

# ---- root ----
expected=64
record root $$
bash "$SELF" server &
bash "$SELF" ignorer &
"$PY" -c "$DAEMON_PY" daemon "$PF" "$LONG"
if [ "${NASTY_ENV_I:-0}" = 1 ]; then
    expected=65
    env -i "$PY" -c "$DAEMON_PY" daemon-env-i "$PF" "$LONG"
fi
bash "$SELF" chain 1 &
bash "$SELF" fanout &
"$PY" -c "$ZOMBIE_PY" "$PF" &
"$PY" -c "$WRITER_PY" &
record writer $!

# Every process writes its own line; READY once all of them have.
status="INCOMPLETE"
for ((i = 0; i < 600; i++)); do
    have=$(wc -l <"$PF")
    if [ "$have" -ge "$expected" ]; then
        status="READY"
        break
    fi
    sleep 0.05
done
if [ "$status" = READY ]; then
    echo READY >"$PF.ready"
else
    echo "INCOMPLETE $(wc -l <"$PF")/$expected" >"$PF.ready"
fi
wait
