"""Resolve a hook spec (``pkg.module:func`` or ``pkg.module.func``) to a callable."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

Hook = Callable[[dict[str, Any], dict[str, Any]], Any]
"""A step hook: ``fn(ctx, state)``."""


def split_hook_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(module, attribute)``.

    ``pkg.module:func`` splits at the colon (the attribute may be dotted, ``mod:Class.method``);
    without a colon it splits at the last dot. Raises ``ValueError`` when either part is empty.
    """
    if ":" in spec:
        module, _, attr = spec.partition(":")
    else:
        module, _, attr = spec.rpartition(".")
    if not module or not attr or any(not part for part in attr.split(".")):
        raise ValueError(f"hook {spec!r} must look like 'pkg.module.func' or 'pkg.module:func'")
    return module, attr


def ensure_cwd_importable() -> None:
    """Put the current directory first on ``sys.path`` unless it is already there.

    A project laid out like ``tm init``'s (``flows/``, ``steps/``) then resolves its hooks from its
    root without ``PYTHONPATH``.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def add_to_import_path(directories: Sequence[str]) -> None:
    """Put ``directories`` (the app dirs) first on ``sys.path``, in order, each once, ahead of
    the current directory (see :func:`ensure_cwd_importable`)."""
    if directories:
        ensure_cwd_importable()
    for directory in reversed(directories):
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)


def import_path(app_dirs: Sequence[str] = ()) -> list[str]:
    """Where this process imports hooks from, first to last: ``app_dirs``, the current
    directory (see :func:`ensure_cwd_importable`), then ``sys.path`` (``''`` resolved)."""
    found: list[str] = []
    for entry in [*app_dirs, os.getcwd(), *sys.path]:
        path = os.path.abspath(entry) if entry else os.getcwd()
        if path not in found:
            found.append(path)
    return found


def _user_path() -> list[str]:
    """The entries of :func:`import_path` outside the Python installation (which would only
    make an error message long: the user's modules are not there)."""
    install = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return [
        entry
        for entry in import_path()
        if not any(entry == root or entry.startswith(root + os.sep) for root in install)
    ]


def not_found_message(spec: str, module_name: str, exc: ModuleNotFoundError) -> str:
    """One line for a hook whose module (or a module it imports) is not found: where this
    process looked, and how to make it look elsewhere."""
    missing = exc.name or module_name
    if not (module_name == missing or module_name.startswith(missing + ".")):
        return (
            f"hook {spec!r}: importing {module_name!r} failed: {exc} (a module it imports; "
            "install it where the hook runs)"
        )
    top = missing.split(".")[0]
    looked = ", ".join(_user_path()) or "nowhere outside the Python installation"
    return (
        f"hook {spec!r}: cannot import {module_name!r}: {exc}; looked in {looked} and the "
        f"Python installation; add the directory holding {top}/ or {top}.py with --app-dir DIR "
        "(or TM_APP_DIR, or PYTHONPATH) where the hook runs: tm run/enqueue for the caller, "
        "tm daemon start or tm workers start for the workers"
    )


def _import_module(module_name: str, spec: str) -> Any:
    for attempt in (1, 2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if attempt == 2:
                raise ImportError(not_found_message(spec, module_name, exc)) from exc
            # The finder caches directory listings; a module written since its last look is
            # missed until the caches are dropped.
            importlib.invalidate_caches()
        except Exception as exc:
            # User code runs at import time; whatever it raises means "this hook cannot be loaded".
            raise ImportError(
                f"hook {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    raise AssertionError("unreachable")


def import_hook(spec: str) -> Hook:
    """Import and return the callable a hook spec names.

    Makes the current directory importable first (see :func:`ensure_cwd_importable`). Raises
    ``ValueError`` for a malformed spec, ``ImportError`` when the module cannot be imported (or
    raises while importing) or lacks the attribute, ``TypeError`` when the attribute is not
    callable. Messages are one line and name the spec.
    """
    module_name, attr = split_hook_spec(spec)
    ensure_cwd_importable()
    target: Any = _import_module(module_name, spec)
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(f"hook {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise TypeError(f"hook {spec!r} is not callable (it is a {type(target).__name__})")
    hook: Hook = target
    return hook
