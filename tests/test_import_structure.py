#!/usr/bin/env python3
r"""The package's import graph is one-way: nothing imports `botorch_community.ax` (nor
Ax); the Ax registrations are installed from one place (`botorch_community._ax_hook`,
called by the package's `__init__`) and run whenever Ax is imported, in any order."""

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "botorch_community"
HAS_AX = importlib.util.find_spec("ax") is not None


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _imported_modules(path: Path) -> set[str]:
    r"""Absolute module names imported anywhere in `path` (any nesting level)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


# The Ax layer: `ax.py` and the Ax subclasses it alone imports.
AX_LAYER = {"botorch_community/ax.py": "botorch_community.ax",
            "botorch_community/_ax_acquisition.py": "botorch_community._ax_acquisition"}


def test_no_module_imports_ax_or_our_ax_module():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        names = _imported_modules(path)
        if rel == "botorch_community/ax.py":
            continue
        for module in AX_LAYER.values():
            assert module not in names, rel
        if rel in AX_LAYER:
            continue
        assert not any(n == "ax" or n.startswith("ax.") for n in names), rel


def test_importing_models_and_acquisitions_does_not_import_ax():
    out = _run(
        """
        import sys
        import botorch_community.models.prior_fitted_network
        import botorch_community.acquisition.discretized
        import botorch_community.posteriors.riemann
        import botorch_community.pfn.networks
        print(sorted(m for m in ("ax", "botorch_community.ax") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


REGISTERED = """
from ax.storage.botorch_modular_registry import CLASS_TO_REVERSE_REGISTRY as R
from botorch.models.model import Model
from botorch.acquisition.acquisition import AcquisitionFunction
from botorch_community.models.prior_fitted_network import PFNModel
from botorch_community.acquisition.discretized import DiscretizedUpperConfidenceBound
assert R[Model]["PFNModel"] is PFNModel
assert R[AcquisitionFunction]["DiscretizedUpperConfidenceBound"] is (
    DiscretizedUpperConfidenceBound
)
print("registered")
"""


@pytest.mark.skipif(not HAS_AX, reason="ax-platform is not installed")
@pytest.mark.parametrize(
    "before",
    [
        # Ax after our model (the registrations follow `import ax`)
        "import botorch_community.models.prior_fitted_network\nimport ax",
        # Ax first, then any module of ours (registered at our package's import)
        "import ax\nimport botorch_community",
        # only our package, then a submodule of Ax (which imports `ax` first)
        "import botorch_community\nimport ax.storage.botorch_modular_registry",
        # our `ax` module first; a find_spec("ax") (here: AX_AVAILABLE) must not
        # disarm the hook, which waits for the real import
        "import importlib.util, botorch_community.ax\n"
        "assert importlib.util.find_spec('ax') is not None\n"
        "from ax import Client",
    ],
    ids=["model_then_ax", "ax_then_package", "package_then_submodule", "our_ax_first"],
)
def test_registrations_happen_in_any_import_order(before):
    assert _run(before + "\n" + REGISTERED).strip() == "registered"


@pytest.mark.skipif(not HAS_AX, reason="ax-platform is not installed")
def test_hook_is_installed_once_and_removed_after_registration():
    _run(
        """
        import sys
        import botorch_community
        from botorch_community import _ax_hook
        _ax_hook.install()  # idempotent
        assert sys.meta_path.count(_ax_hook._HOOK) == 1
        import botorch_community.models.prior_fitted_network
        assert sys.meta_path.count(_ax_hook._HOOK) == 1
        import ax
        assert _ax_hook._HOOK not in sys.meta_path
        import botorch_community.ax as bax
        assert bax._REGISTERED_WITH_AX
        """
    )


def test_without_ax_nothing_breaks():
    _run(
        """
        import sys
        sys.modules["ax"] = None  # as if ax-platform were not installed
        import botorch_community.models.prior_fitted_network
        import botorch_community.acquisition.discretized
        from botorch_community import ax as bax
        assert not bax.AX_AVAILABLE and not bax.register_with_ax()
        try:
            import ax  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("ax imported")
        """
    )
