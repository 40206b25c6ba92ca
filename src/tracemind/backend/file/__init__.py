"""The file backend: a data root on a local file system (docs/queue-format.md); opened
through :func:`tracemind.backend.open_backend` (:mod:`tracemind.backend.file.backend`)."""
