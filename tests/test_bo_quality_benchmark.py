#!/usr/bin/env python3
r"""The BO benchmark (benchmarks/bo_quality.py): problem table, shard split, report
statistics, and a quick end-to-end run on a tiny random network."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bo_quality as B  # noqa: E402
import torch  # noqa: E402


def test_problem_table():
    assert set(B.SUITES["core"]) == {"branin", "hartmann6", "ackley4", "rosenbrock4"}
    full, holdout = B.SUITES["full"], B.SUITES["holdout"]
    assert len(full) >= 12 and holdout == list(B.HOLDOUT) and not set(full) & set(holdout)
    holdout2, highd = B.SUITES["holdout2"], B.SUITES["highd"]
    assert holdout2 == list(B.HOLDOUT2) and not set(holdout2) & (set(full) | set(holdout))
    assert list(B.PROBLEMS) == full + holdout + holdout2 + highd
    for name, (_, _, d, noise) in B.PROBLEMS.items():
        f = B.make_problem(name)
        assert f.dim == d and f.negate
        assert (2 <= d <= 10) if name not in highd else (20 <= d <= 100)
        assert (f.noise_std or 0.0) == noise
        if name in highd:
            assert B.evaluations(name, None) == B.HIGHD_EVALUATIONS
            assert B.initial_points(name) == B.HIGHD_INIT
        else:
            assert B.evaluations(name, None) == max(50, 10 * d)
        assert B.evaluations(name, 12) == 12
        # regret = optimal_value - f(x) >= 0 up to BoTorch's rounding of the optimal values
        # (SixHumpCamel's is -1.0316): the negated problem's optimum is its maximum
        tol = 1e-4 * (1 + abs(f.optimal_value))
        if f._optimizers is not None:
            x_opt = torch.tensor(f._optimizers[:1], dtype=torch.float64)
            assert abs(float(f(x_opt, noise=False)) - f.optimal_value) < 10 * tol, name
        x = f.bounds[0] + (f.bounds[1] - f.bounds[0]) * torch.rand(256, d, dtype=torch.float64)
        assert float(f(x, noise=False).max()) <= f.optimal_value + tol, name
        if isinstance(f, B.EmbeddedProblem):  # only the embedded coordinates matter
            x2 = x.clone()
            unused = [i for i in range(d) if i not in f.dims.tolist()]
            x2[:, unused] = torch.rand(256, len(unused), dtype=torch.float64)
            assert torch.equal(f(x, noise=False), f(x2, noise=False))
    for suite in (full, holdout):
        assert sum(B.PROBLEMS[p][2] >= 8 for p in suite) >= 1
        assert sum(B.PROBLEMS[p][3] > 0 for p in suite) >= 2
    assert sum(B.PROBLEMS[p][2] >= 8 for p in full) >= 2


def test_shard_split_is_a_fixed_partition():
    runs = [(pr, m, s) for s in range(3) for pr in B.PROBLEMS for m in B.METHODS]
    for k in (1, 2, 5, 16):
        parts = [B.shard_runs(runs, i, k, None) for i in range(k)]
        flat = [r for p in parts for r in p]
        assert sorted(flat) == sorted(runs)
        costs = [sum(B.run_cost(pr, m, None) for pr, m, _ in p) for p in parts]
        assert max(costs) <= 1.5 * (sum(costs) / k) + max(B.run_cost(pr, m, None)
                                                         for pr, m, _ in runs)


def _rec(problem, method, seed, final, flags):
    return dict(problem=problem, method=method, seed=seed, final_regret=final,
                iter_times_s=[0.1] * len(flags), at_boundary=flags)


def test_summary_statistics():
    recs = [
        _rec("branin", "pfn_logei", 0, 1.0, [True, False]),
        _rec("branin", "pfn_logei", 1, 2.0, [True, True]),
        _rec("branin", "pfn_logei", 2, 3.0, [False, False]),
        _rec("branin", "gp", 0, 2.0, [False, False]),
        _rec("branin", "gp", 1, 2.0, [False, False]),
        _rec("branin", "gp", 2, 1.0, [False, True]),
        _rec("branin", "sobol", 0, 1.5, [False, False]),
        _rec("branin", "sobol", 1, 1.5, [False, False]),
        _rec("hartmann6", "pfn_logei+v", 0, 0.1, [False]),
        _rec("hartmann6", "gp", 0, 0.2, [False]),
    ]
    S = B.summarize(recs, ["branin", "hartmann6"])
    assert S["methods"] == ["pfn_logei", "pfn_logei+v", "gp", "sobol"]
    assert S["per_problem"]["branin"]["pfn_logei_vs_gp_wins"] == [1.5, 3]
    L = S["lines"]["pfn_logei"]
    assert L["problems_median_le_gp"] == [1, 1]  # medians 2.0 and 2.0: <= holds
    assert L["paired_wins_vs_gp"] == [1.5, 3]
    assert L["problems_worse_than_sobol"] == ["branin"]
    assert L["max_boundary_excess_vs_gp"] == pytest.approx(3 / 6 - 1 / 6)
    assert S["lines"]["pfn_logei+v"]["paired_wins_vs_gp"] == [1.0, 1]


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "bo_quality.py"),
                           "--quick", "--network", "random", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_quick_run_variants_and_report(tmp_path):
    out = str(tmp_path / "bo")
    first = _run("--methods", "pfn_logei", "gp", "sobol", "--out", out)
    assert first.returncode == 0, first.stderr[-2000:]
    recs = [json.loads(line) for line in (tmp_path / "bo.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in recs) == ["gp", "pfn_logei", "sobol"]
    for r in recs:
        n_bo = r["iterations"] - r["n_init"]
        assert len(r["regret"]) == r["iterations"] == 8
        assert len(r["proposals_unit"]) == len(r["at_boundary"]) == n_bo
        assert all(0.0 <= v <= 1.0 for p in r["proposals_unit"] for v in p)
    # the Sobol initial points are shared by all methods of a seed
    assert len({tuple(r["y_observed"][: r["n_init"]]) for r in recs}) == 1
    # a variant with PFN options, stored under a tagged name in the same file
    var = _run("--methods", "pfn_logei", "--pfn-options", '{"ensemble_size": 2}',
               "--tag", "ens2", "--out", out)
    assert var.returncode == 0, var.stderr[-2000:]
    md = (tmp_path / "bo.md").read_text()
    assert "pfn_logei+ens2 wins vs gp" in md and "RANDOM network" in md
    summary = json.loads((tmp_path / "bo.json").read_text())
    assert "pfn_logei+ens2" in summary["pfn_summary"]
    assert (tmp_path / "bo.png").stat().st_size > 0
    # other options under an existing method name are refused
    bad = _run("--methods", "pfn_logei", "--pfn-options", '{"ensemble_size": 2}',
               "--out", out)
    assert bad.returncode != 0 and "--tag" in bad.stderr + bad.stdout
    # network settings and the warm start: a variant of their own, recorded
    # (with the two other incumbents: the posterior mean's and qLogNEI's)
    warm = _run("--methods", "pfn_logei", "pfn_logei_pmean", "pfn_qlognei", "--pfn-options",
                '{"warm_start": true}', "--network-set", "gp_constant_mean=true",
                "--tag", "warm", "--out", out)
    assert warm.returncode == 0, warm.stderr[-2000:]
    recs = [json.loads(line) for line in (tmp_path / "bo.jsonl").read_text().splitlines()]
    w = [r for r in recs if r["method"] == "pfn_logei+warm"]
    assert w and w[0]["network_set"] == {"gp_constant_mean": True}
    for m in ("pfn_logei_pmean+warm", "pfn_qlognei+warm"):
        r = next(r for r in recs if r["method"] == m)
        assert len(r["proposals_unit"]) == r["iterations"] - r["n_init"]
    bad = _run("--methods", "pfn_logei", "--pfn-options", '{"warm_start": true}',
               "--tag", "warm", "--out", out)  # same tag, other network settings
    assert bad.returncode != 0 and "network_set" in bad.stderr + bad.stdout
