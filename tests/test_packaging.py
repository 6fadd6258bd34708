#!/usr/bin/env python3
r"""Our install wins over the `botorch_community` bundled in the botorch wheel.

Builds our wheel, installs it into a fresh virtualenv whose dependencies (torch, botorch
with its own bundled `botorch_community`, ...) come from the current environment through a
`.pth` file, and imports from an unrelated working directory.
"""

import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent(
    """
    import json, botorch_community
    import botorch_community.models as models
    out = {"package": botorch_community.__file__}
    try:
        from botorch_community.models.prior_fitted_network import PFNModel
        out["has_cache_api"] = hasattr(PFNModel, "cache_training_context")
        import botorch_community.posteriors.riemann as r
        import botorch_community.acquisition.discretized as a
        out["riemann"] = r.__file__
        out["discretized"] = a.__file__
        import botorch_community.models.vblls as vblls  # botorch's own module
        out["vblls"] = vblls.__file__
        from botorch_community.pfn import load_pretrained
        try:
            net = load_pretrained()
            out["default_network"] = net.num_features
        except FileNotFoundError as e:
            out["default_network"] = "missing: " + str(e)
    except Exception as e:  # report, the test asserts
        out["error"] = repr(e)
    print(json.dumps(out))
    """
)


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _probe(venv: Path, cwd: Path) -> dict:
    res = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("*.whl"))


def _fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    # Dependencies from this environment, appended after the venv's own site-packages.
    (_site_packages(venv) / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    return venv


def test_fresh_venv_without_our_wheel_gets_botorchs_copy(tmp_path):
    venv = _fresh_venv(tmp_path)
    out = _probe(venv, cwd=tmp_path)
    # The control: botorch's bundled package is what an un-installed env imports.
    assert "_botorch_community_pfn" not in out["package"]
    assert out.get("has_cache_api") is not True


def test_fresh_venv_with_our_wheel_imports_ours_from_any_folder(tmp_path, wheel):
    venv = _fresh_venv(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
         str(_site_packages(venv)), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    out = _probe(venv, cwd=elsewhere)
    assert "error" not in out, out
    ours = str(_site_packages(venv) / "_botorch_community_pfn")
    assert out["package"].startswith(ours)
    assert out["riemann"].startswith(ours) and out["discretized"].startswith(ours)
    assert out["has_cache_api"] is True
    # botorch's other community modules stay importable, from botorch's own folder
    assert "_botorch_community_pfn" not in out["vblls"]
    # the default network ships inside the wheel
    assert isinstance(out["default_network"], int), out["default_network"]
