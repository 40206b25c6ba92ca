"""Resolve a hook spec (``pkg.module:func`` or ``pkg.module.func``) to a callable."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
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


def _import_module(module_name: str, spec: str) -> Any:
    for attempt in (1, 2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if attempt == 2:
                raise ImportError(f"hook {spec!r}: cannot import {module_name!r}: {exc}") from exc
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
