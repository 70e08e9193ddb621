"""The engine: sessions, launch, drain, tree discovery, teardown, readiness.
It imports neither IPython nor ipywidgets."""
