"""Benchmarks of TraceMind side by side with Huey and the disk's own limits (``python -m bench``).

Not part of the installed package: run from the repository root with the project's venv. See
docs/benchmarks.md for the figures, the latest table and what bounds each figure.
"""
