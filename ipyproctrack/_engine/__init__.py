"""The engine: sessions, launch, drain, readiness, and the front of tree discovery and
teardown (which live in ``ipyproctrack._proc``). It imports neither IPython nor ipywidgets.

One job per module:

- ``tracker``: ``Tracker``, one session's registry (get, start, cleanup, close).
- ``process``: ``TrackedProcess``, one launch, and its state machine (phases in ``state``).
- ``launch``: argument checks before anything runs, and spawning the root process.
- ``loop``: the background anyio loop thread: exit watches, readiness waits (and the
  Windows drain).
- ``drain``: the drain thread that reads every pipe (POSIX).
- ``output``: where output goes (``OutputSink``: rotating log, tail, subscribers).
- ``ready/``: readiness checks (``checks``) and the one deadline loop (``wait``).
- ``ports``: who holds a port, which ports a tree listens on.
- ``naming``: generated names and log file names.
- ``psutil_scan``: psutil as the process scanner where there is no /proc.

Importing the engine registers that scanner (a no-op where /proc exists).
"""

from .psutil_scan import install as _install_psutil_scan

_install_psutil_scan()
