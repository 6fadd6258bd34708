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


def test_grid_floor_is_the_discretised_oracle():
    import math

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from quality_nll import gauss_nll, grid_nll

    g = torch.Generator().manual_seed(0)
    mu, y = torch.randn(3, 40, generator=g, dtype=torch.float64), torch.randn(3, 40, generator=g, dtype=torch.float64)
    var = torch.full_like(mu, 0.3**2)
    mean, std = torch.full((3, 1), 0.5, dtype=torch.float64), torch.full((3, 1), 2.0, dtype=torch.float64)
    fine = torch.linspace(-6.0, 6.0, 20001, dtype=torch.float64)  # buckets of 6e-4 std
    diff = grid_nll(mu, var, y, mean, std, fine) - gauss_nll(mu, var, y)
    # within a bucket the density's slope moves a point's NLL (first order in the width);
    # over many points that averages out
    assert float(diff.abs().max()) < 0.05 and abs(float(diff.mean())) < 2e-3
    # on coarse buckets a sharp predictive pays about log(width / (sqrt(2 pi e) sd))
    coarse = torch.linspace(-6.0, 6.0, 13, dtype=torch.float64)  # width 1 std = 2 raw
    sharp = torch.full_like(mu, 1e-4)
    gap = (grid_nll(mu, sharp, mu, mean, std, coarse) - gauss_nll(mu, sharp, mu)).mean()
    assert float(gap) > math.log(2.0 / (math.sqrt(2 * math.pi) * 1e-2)) - 1.0


def test_end_to_end_quick(tmp_path):
    # one tiny cell: GP + both PFN variants on the shipped network (a few seconds)
    out = tmp_path / "e2e"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "end_to_end.py"), "--quick", "--threads", "1",
         "--ds", "6", "--ns", "20", "--settings", "2x16", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (cell,) = json.loads(out.with_suffix(".json").read_text())["results"]
    assert set(cell["methods"]) == {"gp", "pfn_default", "pfn_gp"}
    for m, r in cell["methods"].items():
        assert 0 < r["grad_calls"] < r["calls"] and r["total_s"] > 0, m
        if m != "gp":
            assert r["encodings"] == 1 and r["encodings_in_optimize"] == 0, m
    assert "| 20 | 6 | 2x16 | gp |" in out.with_suffix(".md").read_text()


def test_lbfgs_calls_quick(tmp_path):
    # one tiny cell: each restart's L-BFGS-B alone, for the GP and the warm PFN
    out = tmp_path / "lb"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lbfgs_calls.py"), "--threads", "1",
         "--n", "14", "--setting", "2x16", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.with_suffix(".json").read_text())
    for name, m in r["methods"].items():
        assert len(m["restarts"]) == 2 and m["optimize_acqf_calls"] > 0, name
        # each restart's own L-BFGS-B stops at most at the best value found, which the
        # slowest restart's trace approaches from below
        assert all(x["value"] <= m["best_value"] for x in m["restarts"])
        assert all(g <= 1e-12 for g in m["slowest_trace_gap"][-1:])
    pfn = r["methods"]["pfn_warm"]
    w = pfn["particle_weights"]
    assert len(w) == len(pfn["particle_lengthscales"]) == len(pfn["particle_log_marginal_likelihood"])
    assert abs(sum(w) - 1.0) < 1e-9
