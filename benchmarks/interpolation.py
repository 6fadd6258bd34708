#!/usr/bin/env python3
r"""Does the surrogate reproduce what it has observed? Deterministic test functions.

BO on a deterministic objective needs a surrogate that trusts its observations: a model that
explains part of the data as noise keeps a wide predictive at the incumbent and misses the
values of the best points. For each problem and training-set size `n` (scrambled Sobol
points, ``--seeds`` draws), this prints, in units of the standard deviation of the observed
`y`:

* ``err@obs``: RMS error of the predictive mean at the observed points;
* ``std@obs``: median predictive standard deviation there;
* ``test rmse``: RMS error of the mean at 500 uniform test points;

for the shipped PFN (``pfn``), the PFN told the objective is noise-free
(``pfn_yvar0``: ``train_Yvar = 0``; the same as ``pfn`` unless the network was trained with
noise hints), and a ``SingleTaskGP`` fitted by marginal likelihood.

Usage::

    .venv/bin/python benchmarks/interpolation.py [--checkpoint PATH] [--ns 10 30 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PROBLEMS = {"branin": ("Branin", {}), "hartmann6": ("Hartmann", {"dim": 6}),
            "ackley4": ("Ackley", {"dim": 4}), "rosenbrock4": ("Rosenbrock", {"dim": 4})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="network (default: the shipped one)")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--ns", type=int, nargs="+", default=[10, 30, 50])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="output stem (default results/interpolation)")
    args = p.parse_args()
    C.use_checkout()
    import botorch.test_functions as tf
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from tqdm import tqdm

    from botorch_community.models.prior_fitted_network import PFNModel
    from botorch_community.pfn.checkpoint import load_pretrained

    torch.set_num_threads(1)
    net = load_pretrained(args.checkpoint)
    rows, t0 = [], time.time()
    jobs = [(pb, n, s) for pb in args.problems for n in args.ns for s in range(args.seeds)]
    for pb, n, seed in tqdm(jobs, desc="interpolation", unit="fit"):
        cls, kw = PROBLEMS[pb]
        f = getattr(tf, cls)(negate=True, **kw)
        d = f.dim
        lb, ub = f.bounds.double()
        X = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(n).double()
        Y = f(lb + (ub - lb) * X).unsqueeze(-1)
        g = torch.Generator().manual_seed(1000 + seed)
        Xt = torch.rand(500, d, generator=g, dtype=torch.float64)
        Yt = f(lb + (ub - lb) * Xt).unsqueeze(-1)
        s = Y.std()
        models = {"pfn": PFNModel(X, Y, model=net),
                  "pfn_yvar0": PFNModel(X, Y, model=net, train_Yvar=torch.zeros_like(Y))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gp = SingleTaskGP(X, Y)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        models["stgp"] = gp
        for name, m in models.items():
            with torch.no_grad():
                kw_post = {"observation_noise": True}  # the predictive of observations
                po = m.posterior(X.unsqueeze(-2) if name != "stgp" else X, **kw_post)
                pt = m.posterior(Xt.unsqueeze(-2) if name != "stgp" else Xt, **kw_post)
            mo, so = po.mean.reshape(-1), po.variance.reshape(-1).sqrt()
            rows.append({
                "problem": pb, "n": n, "seed": seed, "model": name,
                "err_obs": float(((mo - Y.view(-1)) ** 2).mean().sqrt() / s),
                "std_obs": float(so.median() / s),
                "test_rmse": float(((pt.mean.reshape(-1) - Yt.view(-1)) ** 2).mean().sqrt() / s),
            })
    names = ["pfn", "pfn_yvar0", "stgp"]
    L = [f"### Fit at the observations (network {Path(str(args.checkpoint or 'default')).name}, "
         f"noise hints: {bool(net.noise_hint)}; mean over {args.seeds} Sobol seeds; units: std "
         "of the observed y)", "",
         "| problem | n | " + " | ".join(f"{m}: err@obs / std@obs / test rmse" for m in names) + " |",
         "|---|---|" + "---|" * len(names)]
    for pb in args.problems:
        for n in args.ns:
            cells = []
            for m in names:
                rs = [r for r in rows if r["problem"] == pb and r["n"] == n and r["model"] == m]
                avg = {k: sum(r[k] for r in rs) / len(rs) for k in ("err_obs", "std_obs", "test_rmse")}
                cells.append(f"{avg['err_obs']:.3f} / {avg['std_obs']:.3f} / {avg['test_rmse']:.3f}")
            L.append(f"| {pb} | {n} | " + " | ".join(cells) + " |")
    md = "\n".join(L) + "\n"
    stem = Path(args.out) if args.out else C.BENCH_DIR / "results" / "interpolation"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(
        {"benchmark": "interpolation", "args": vars(args), "noise_hint": bool(net.noise_hint),
         "elapsed_s": time.time() - t0, "machine": C.machine_info("cpu"), "rows": rows},
        indent=1) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"[interpolation] {time.time() - t0:.0f} s; wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
