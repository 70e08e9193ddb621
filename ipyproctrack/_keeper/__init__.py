"""The POSIX keeper: its main loop (``main``), its wire protocol (``protocol``) and the
engine's side (``client``). Nothing is imported here: the keeper process itself must
load only what it uses."""
