"""The ``tm`` command line: a thin layer over library calls, importing lazily."""
