"""The public surface of tracemind.flows and import_hook's resolution rules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tracemind.flows
from tracemind import steps
from tracemind.flows import import_hook

SRC_DIR = Path(tracemind.flows.__file__).resolve().parents[2]


def test_public_api_is_pinned() -> None:
    # Changing this list is a public API change: do it on purpose.
    assert sorted(tracemind.flows.__all__) == [
        "Edge",
        "Flow",
        "FlowSnapshot",
        "Hook",
        "RetryPolicy",
        "Step",
        "StepKind",
        "import_hook",
        "load_flow",
        "parse_flow",
        "run_flow",
        "step_flow",
    ]
    assert all(hasattr(tracemind.flows, name) for name in tracemind.flows.__all__)


def test_importing_flows_does_not_import_yaml() -> None:
    # `tm enqueue` imports this package; yaml is loaded only when a YAML file is parsed.
    code = "import sys, tracemind.flows; print('yaml' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}

    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "spec", ["tracemind.steps.greet", "tracemind.steps:greet", "tracemind:steps.greet"]
)
def test_import_hook_spec_forms(spec: str) -> None:
    assert import_hook(spec) is steps.greet


@pytest.mark.parametrize("spec", ["greet", ":greet", "tracemind.steps:", "mod:a..b", "mod."])
def test_import_hook_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(
        ValueError, match=re.escape("must look like 'pkg.module.func' or 'pkg.module:func'")
    ):
        import_hook(spec)


def test_import_hook_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match=re.escape("'tracemind.steps.__all__' is not callable")):
        import_hook("tracemind.steps.__all__")


def test_import_hook_puts_cwd_first_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_imports: None
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwd_hooks_mod.py").write_text("def hook(ctx, state):\n    return {'ok': 1}\n")

    hook = import_hook("cwd_hooks_mod.hook")
    import_hook("cwd_hooks_mod:hook")

    assert hook({}, {}) == {"ok": 1}
    assert sys.path[0] == str(tmp_path)
    assert sys.path.count(str(tmp_path)) == 1


def test_import_hook_sees_a_module_written_after_a_failed_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_imports: None
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImportError, match="cannot import 'late_mod'"):
        import_hook("late_mod.hook")

    (tmp_path / "late_mod.py").write_text("def hook(ctx, state):\n    return None\n")

    assert callable(import_hook("late_mod.hook"))
