#!/usr/bin/env python3
r"""Smoke runs of the quality benchmark's modes on a tiny random network (seconds)."""

import json
import subprocess
import sys
from pathlib import Path

from botorch_community.pfn.checkpoint import save_pretrained
from botorch_community.pfn.testing import random_pfn

REPO = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality_nll.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_quality_nll_modes(tmp_path):
    net = random_pfn(num_features=4, noise_hint=True, metric_attention=True)
    save_pretrained(net, tmp_path / "net", metadata={"prior": {"num_features": 4}})
    common = ["--quick", "--checkpoint", str(tmp_path / "net"), "--dims", "1"]
    first = _run(*common, "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    a = json.loads((tmp_path / "a.json").read_text())
    # reusing the baselines reproduces the PFN figures of the same network (as an ensemble
    # of one)
    again = _run(*common, "--reuse-baselines", str(tmp_path / "a.json"), "--ensemble", "1",
                 "--out", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-2000:]
    b = json.loads((tmp_path / "b.json").read_text())
    for ca, cb in zip(a["cells"], b["cells"]):
        assert ca["per_dataset"]["pfn"] == cb["per_dataset"]["pfn"]
        assert ca["per_dataset"]["bayes"] == cb["per_dataset"]["bayes"]
    # known noise (refuses baselines computed without it)
    bad = _run(*common, "--reuse-baselines", str(tmp_path / "a.json"), "--known-noise",
               "--out", str(tmp_path / "d"))
    assert bad.returncode != 0 and "known_noise differs" in bad.stderr + bad.stdout
    kn = _run(*common, "--known-noise", "--no-stgp", "--out", str(tmp_path / "e"))
    assert kn.returncode == 0, kn.stderr[-2000:]
    assert "units check" in (tmp_path / "e.md").read_text()
