#!/usr/bin/env python3
r"""BO quality: the shipped PFN vs a GP vs Sobol on standard test functions.

Methods (all maximise the negated BoTorch test function, as BoTorch does):

* ``pfn_logei``: the shipped default PFN (``PFNModel``, inputs normalised to the unit
  cube) + ``DiscretizedLogExpectedImprovement``, optimised inside
  ``cache_training_context()``;
* ``pfn_ei``: the same with ``DiscretizedExpectedImprovement`` (opt-in, ``--methods``);
* ``pfn_logei_bilog``: ``pfn_logei`` on ``bilog(y) = sign(y) log(1 + |y|)`` instead of y
  (opt-in): a monotone squashing of skewed objectives before the PFN, in the spirit of
  PFNs4BO's power transform (EI is then taken in the transformed space);
* ``pfn_logei_ens4``: ``PFNModel(..., ensemble_size=4)`` (opt-in);
* ``pfn_logei_noisefree``: ``PFNModel(..., train_Yvar=0)`` (opt-in): tells the network the
  objective is deterministic (the test problems are); only differs from ``pfn_logei`` with a
  network trained with noise hints (``noise_hint=True``);
* ``gp``: ``SingleTaskGP`` (BoTorch defaults) fitted with ``fit_gpytorch_mll`` +
  ``qLogNoisyExpectedImprovement``;
* ``sobol``: scrambled Sobol points.

Each run: ``2 d`` Sobol initial points (shared by all methods for a seed), then one point
per iteration up to ``--iterations`` evaluations in total, ``optimize_acqf`` with
``--num-restarts`` / ``--raw-samples``. Regret = optimum - best value so far
(noise-free).

Resumable and parallel-safe: every finished (problem, method, seed) is appended as one
JSON line to ``--results`` (under an exclusive file lock) and skipped on the next run;
start several processes with ``--shard i/k`` to split the runs among them. A report
(markdown table, JSON summary, PNG grid of best-so-far curves: median and quartiles)
is written from whatever the results file holds (``--report-only`` just does that).

Usage::

    .venv/bin/python benchmarks/bo_quality.py                       # 10 seeds, 50 evals
    .venv/bin/python benchmarks/bo_quality.py --seeds 3 --iterations 30
    .venv/bin/python benchmarks/bo_quality.py --shard 0/2 & \
    .venv/bin/python benchmarks/bo_quality.py --shard 1/2 ; wait
    .venv/bin/python benchmarks/bo_quality.py --report-only
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PROBLEMS = {
    "branin": ("Branin", {}),
    "hartmann6": ("Hartmann", {"dim": 6}),
    "ackley4": ("Ackley", {"dim": 4}),
    "rosenbrock4": ("Rosenbrock", {"dim": 4}),
}
METHODS = ["pfn_logei", "gp", "sobol"]
ALL_METHODS = ["pfn_logei", "pfn_ei", "pfn_logei_bilog", "pfn_logei_ens4",
               "pfn_logei_noisefree",
               "gp", "sobol"]


def make_problem(name: str):
    import botorch.test_functions as tf

    cls, kw = PROBLEMS[name]
    return getattr(tf, cls)(negate=True, **kw)


def _load_done(path: Path) -> dict:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a partially written line (killed writer): ignored
            done[(r["problem"], r["method"], r["seed"], r["iterations"])] = r
    return done


def _append(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)


def run_one(problem_name: str, method: str, seed: int, args, network) -> dict:
    import torch
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.input import Normalize
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from torch.quasirandom import SobolEngine

    from botorch_community.acquisition.discretized import (
        DiscretizedExpectedImprovement,
        DiscretizedLogExpectedImprovement,
    )
    from botorch_community.models.prior_fitted_network import PFNModel

    tkw = dict(dtype=torch.float64, device=args.device)
    f = make_problem(problem_name)
    d = f.dim
    bounds = f.bounds.to(**tkw)
    unit = torch.stack([torch.zeros(d, **tkw), torch.ones(d, **tkw)])
    n_init = 2 * d
    sobol = SobolEngine(d, scramble=True, seed=seed)
    U = sobol.draw(n_init).to(**tkw)
    X = bounds[0] + (bounds[1] - bounds[0]) * U
    Y = f(X).unsqueeze(-1)
    iter_times, fit_times = [], []
    torch.manual_seed(seed)
    while X.shape[0] < args.iterations:
        t0 = time.perf_counter()
        if method == "sobol":
            u = sobol.draw(1).to(**tkw)
            x = bounds[0] + (bounds[1] - bounds[0]) * u
            t_fit = 0.0
        else:
            Xu = (X - bounds[0]) / (bounds[1] - bounds[0])
            if method.startswith("pfn"):
                Yp = Y.sign() * torch.log1p(Y.abs()) if method.endswith("_bilog") else Y
                kw = {}
                if method == "pfn_logei_ens4":
                    kw["ensemble_size"] = 4
                if method == "pfn_logei_noisefree":
                    kw["train_Yvar"] = torch.zeros_like(Yp)
                model = PFNModel(Xu, Yp, model=network, **kw)
                t_fit = time.perf_counter() - t0
                cls = (DiscretizedExpectedImprovement if method == "pfn_ei"
                       else DiscretizedLogExpectedImprovement)
                acqf = cls(model, best_f=Yp.max())
                with model.cache_training_context():
                    u, _ = optimize_acqf(acqf, bounds=unit, q=1,
                                         num_restarts=args.num_restarts,
                                         raw_samples=args.raw_samples)
            else:
                gp = SingleTaskGP(Xu, Y, outcome_transform=Standardize(m=1))
                fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
                t_fit = time.perf_counter() - t0
                acqf = qLogNoisyExpectedImprovement(gp, X_baseline=Xu, prune_baseline=True)
                u, _ = optimize_acqf(acqf, bounds=unit, q=1, num_restarts=args.num_restarts,
                                     raw_samples=args.raw_samples)
            x = bounds[0] + (bounds[1] - bounds[0]) * u.detach()
        y = f(x).reshape(1, 1)
        iter_times.append(time.perf_counter() - t0)
        fit_times.append(t_fit)
        X = torch.cat([X, x.reshape(1, d)])
        Y = torch.cat([Y, y])
    Yt = f(X, noise=False)  # negated, noise-free values (the problems are noise-free)
    best = torch.cummax(Yt, dim=0).values
    opt = float(f.optimal_value)
    return dict(problem=problem_name, method=method, seed=seed, iterations=args.iterations,
                n_init=n_init, num_restarts=args.num_restarts, raw_samples=args.raw_samples,
                best_so_far=best.tolist(), regret=(opt - best).tolist(),
                final_regret=opt - float(best[-1]), iter_times_s=iter_times,
                fit_times_s=fit_times, optimal_value=opt, time=time.strftime("%H:%M:%S"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "bo_quality")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..SEEDS-1")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--methods", nargs="+", default=METHODS, choices=ALL_METHODS)
    p.add_argument("--iterations", type=int, default=50, help="total evaluations per run")
    p.add_argument("--num-restarts", type=int, default=8)
    p.add_argument("--raw-samples", type=int, default=256)
    p.add_argument("--network", default="default", choices=["default", "random"],
                   help="random: smoke test only (an untrained network is no surrogate)")
    p.add_argument("--checkpoint", default=None,
                   help="with --network default: a checkpoint written by the training "
                        "command to use instead of the shipped weights (a candidate)")
    p.add_argument("--results", default=None, help="JSONL file (default: <out>.jsonl)")
    p.add_argument("--shard", default="0/1", help="i/k: run every k-th pending run")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.problems, args.iterations = 1, ["branin"], 8
        args.num_restarts, args.raw_samples = 2, 32
    stem = C.out_stem(args, "bo_quality")
    res_path = Path(args.results) if args.results else stem.with_suffix(".jsonl")
    C.use_checkout()
    if not args.report_only:
        import torch
        from tqdm import tqdm

        C.set_threads(args.threads)
        network = None
        if any(m.startswith("pfn") for m in args.methods):
            from botorch_community.pfn.testing import random_pfn

            if args.network == "default":
                from botorch_community.pfn import load_pretrained

                try:
                    network = load_pretrained(args.checkpoint, device=args.device)
                except FileNotFoundError as e:
                    raise SystemExit(f"The shipped default network is not available: {e}\n"
                                     "Run without the pfn methods (--methods gp sobol) or "
                                     "use --network random for a smoke test.")
            else:
                network = random_pfn(num_features=8, emsize=64, nlayers=2, nhead=2,
                                     nhid=128, num_buckets=100).to(args.device)
        i, k = (int(s) for s in args.shard.split("/"))
        todo = [(pr, m, s) for s in range(args.seeds) for pr in args.problems
                for m in args.methods]
        done = _load_done(res_path)
        todo = [t for t in todo if (*t, args.iterations) not in done]
        todo = todo[i::k]
        print(f"{len(done)} runs already in {res_path}; {len(todo)} to do in shard {i}/{k}")
        for pr, m, s in tqdm(todo, desc="bo_quality", unit="run"):
            if (pr, m, s, args.iterations) in _load_done(res_path):
                continue  # finished meanwhile by another process
            rec = run_one(pr, m, s, args, network)
            rec["network"] = (getattr(network, "config", None) if m.startswith("pfn") else None)
            rec["network_kind"] = args.network if m.startswith("pfn") else None
            if m.startswith("pfn") and args.network == "default":
                from botorch_community.pfn.checkpoint import read_checkpoint_config

                rec["network_sha256"] = read_checkpoint_config(args.checkpoint).get("sha256")
                rec["checkpoint"] = args.checkpoint
            rec["device"] = args.device
            _append(res_path, rec)
    report(res_path, stem, args)


def report(res_path: Path, stem: Path, args) -> None:
    import numpy as np

    recs = [r for r in _load_done(res_path).values() if r["iterations"] == args.iterations]
    if not recs:
        print("no results yet")
        return
    problems = [p for p in PROBLEMS if any(r["problem"] == p for r in recs)]
    methods = [m for m in ALL_METHODS if any(r["method"] == m for r in recs)]
    rows, summary = [], {}
    for pr in problems:
        row = [pr]
        for m in methods:
            rs = [r for r in recs if r["problem"] == pr and r["method"] == m]
            if not rs:
                row.append("–")
                continue
            fr = np.array([r["final_regret"] for r in rs])
            it = np.concatenate([r["iter_times_s"] for r in rs]) if m != "sobol" else np.zeros(1)
            q1, med, q3 = np.percentile(fr, [25, 50, 75])
            summary[f"{pr}/{m}"] = dict(seeds=len(rs), median_final_regret=med, q25=q1, q75=q3,
                                        median_iter_s=float(np.median(it)))
            cell = f"{med:.3g} [{q1:.3g}, {q3:.3g}] ({len(rs)})"
            if m != "sobol":
                cell += f", {np.median(it):.2f} s/it"
            row.append(cell)
        rows.append(row)
    md = (f"### Final simple regret after {args.iterations} evaluations (2d Sobol initial): "
          "median [25%, 75%] (seeds), median wall time per iteration\n\n"
          + C.markdown_table(["problem"] + methods, rows))
    net_kinds = {r.get("network_kind") for r in recs if r["method"].startswith("pfn")}
    if "random" in net_kinds:
        md += "\n\n**PFN runs used a RANDOM network (smoke test): not a quality result.**"
    print(md)
    stem.with_suffix(".md").write_text(md + "\n")
    C.write_json(stem.with_suffix(".json"), dict(benchmark="bo_quality",
                                                 machine=C.machine_info(args.device),
                                                 args=vars(args), summary=summary,
                                                 results_file=str(res_path)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = min(2, len(problems))
    nrow = (len(problems) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow), squeeze=False)
    for ax, pr in zip(axes.flat, problems):
        for m in methods:
            rs = [r for r in recs if r["problem"] == pr and r["method"] == m]
            if not rs:
                continue
            R = np.maximum(np.array([r["regret"] for r in rs]), 1e-12)
            xs = np.arange(1, R.shape[1] + 1)
            q1, med, q3 = np.percentile(R, [25, 50, 75], axis=0)
            ax.semilogy(xs, med, label=f"{m} ({len(rs)} seeds)")
            ax.fill_between(xs, q1, q3, alpha=0.2)
        ax.axvline(rs[0]["n_init"] if rs else 0, color="gray", ls=":", lw=1)
        ax.set(title=pr, xlabel="evaluations", ylabel="simple regret (best so far)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(problems):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    print(f"\nwrote {stem}.md, {stem}.json, {stem}.png (runs in {res_path})")


if __name__ == "__main__":
    main()
