#!/usr/bin/env python3
r"""How the cost of one discretized-EI forward + backward scales, cached vs uncached.

Two sweeps on one random network (emsize 256, 6 layers, 4 heads, nhid 512, 1000
buckets), d = 6:

* vs the number of training points n in 25 ... 400 (at ``--m`` = 32 candidates);
* vs the number of candidates m in 1 ... 4096 (at n = 100).

Variants: cached with the context encode inside the timed call (fresh
``cache_training_context()`` block per call), cached steady state (context already
encoded), uncached (``cache_context=False``). All in one process, the variants of one
point timed alternately (so load from other processes hits them alike); median of
repeats. Uncached points whose estimated call exceeds ``--max-call-s`` are skipped
(recorded as such). Log-log plot of both sweeps.

Usage::

    .venv/bin/python benchmarks/scaling.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NET = dict(emsize=256, nlayers=6, nhead=4, nhid=512, num_buckets=1000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "scaling")
    p.add_argument("--ns", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    p.add_argument("--ms", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096])
    p.add_argument("--m", type=int, default=32, help="candidates in the n sweep")
    p.add_argument("--n", type=int, default=100, help="training points in the m sweep")
    p.add_argument("--d", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--time-budget", type=float, default=5.0, help="s of repeats per point")
    p.add_argument("--max-call-s", type=float, default=60.0)
    args = p.parse_args()
    if args.quick:
        args.ns, args.ms, args.repeats, args.time_budget = [25, 100], [1, 16, 256], 3, 2.0
        args.max_call_s = 20.0
    C.use_checkout()
    import torch
    from tqdm import tqdm

    from botorch_community.acquisition.discretized import DiscretizedExpectedImprovement
    from botorch_community.models.prior_fitted_network import PFNModel
    from botorch_community.pfn.testing import random_pfn

    dev, d = args.device, args.d
    C.set_threads(args.threads)
    net = random_pfn(num_features=d, seed=0, **NET).to(dev)
    gen = torch.Generator().manual_seed(0)
    X_all = torch.rand(max(args.ns + [args.n]), d, generator=gen).to(dev)
    Y_all = torch.randn(X_all.shape[0], 1, generator=gen).to(dev)
    Xc_all = torch.rand(max(args.ms + [args.m]), 1, d, generator=gen).to(dev)

    def make_calls(n, m):
        model = PFNModel(X_all[:n], Y_all[:n], model=net, cache_context=False)
        acqf = DiscretizedExpectedImprovement(model, best_f=Y_all[:n].max())
        Xc = Xc_all[:m].clone().requires_grad_(True)

        def fwd_bwd():
            Xc.grad = None
            acqf(Xc).sum().backward()

        def cold():
            with model.cache_training_context():
                fwd_bwd()

        def steady():
            fwd_bwd()

        return model, fwd_bwd, cold, steady

    # warm-up
    _, fb, cold, _ = make_calls(5, 2)
    fb(), cold()

    points = [("n", n, n, args.m) for n in args.ns] + [("m", m, args.n, m) for m in args.ms]
    results, last_unc = [], {}
    for sweep, x, n, m in tqdm(points, desc="scaling", unit="pt"):
        model, fwd_bwd, cold, steady = make_calls(n, m)
        rec = dict(sweep=sweep, x=x, n=n, m=m, d=d, loadavg_start=os.getloadavg())
        prev = last_unc.get(sweep)
        est = prev[1] * (x / prev[0]) ** (1 if sweep == "m" else 1.3) if prev else 0.0
        run_unc = est <= args.max_call_s
        if not run_unc:
            rec["uncached_skipped"] = f"estimated {est:.0f} s per call > --max-call-s"
        t_cold, t_steady, t_unc = [], [], []
        t0 = time.perf_counter()
        while True:
            t_cold.append(C.timed(cold, dev))
            with model.cache_training_context():
                fwd_bwd()  # encode
                t_steady.append(C.timed(steady, dev))
            if run_unc and (len(t_unc) == 0 or t_unc[-1] * (len(t_unc) + 1) < 3 * args.time_budget):
                t_unc.append(C.timed(fwd_bwd, dev))
            if len(t_cold) >= args.repeats or time.perf_counter() - t0 > args.time_budget:
                if len(t_cold) >= 2 or time.perf_counter() - t0 > 4 * args.time_budget:
                    break
        rec.update(cached_cold_s=C.median(t_cold), cached_steady_s=C.median(t_steady),
                   times_cold=t_cold, times_steady=t_steady)
        if t_unc:
            rec.update(uncached_s=C.median(t_unc), times_uncached=t_unc)
            last_unc[sweep] = (x, rec["uncached_s"])
        results.append(rec)

    stem = C.out_stem(args, "scaling")
    payload = dict(benchmark="scaling", machine=C.machine_info(dev), args=vars(args),
                   network=NET, results=results)
    C.write_json(stem.with_suffix(".json"), payload)
    md = render(results, args)
    print(md)
    stem.with_suffix(".md").write_text(md + "\n")
    plot(results, stem.with_suffix(".png"), args)
    print(f"\nwrote {stem}.json, {stem}.md, {stem}.png")


def render(results, args) -> str:
    out = []
    for sweep, title in (("n", f"vs training points n (m = {args.m} candidates)"),
                         ("m", f"vs candidates m (n = {args.n})")):
        rows = []
        for r in results:
            if r["sweep"] != sweep:
                continue
            u = r.get("uncached_s")
            rows.append([r["x"], C.fmt_s(u) if u else "skipped",
                         C.fmt_s(r["cached_cold_s"]), C.fmt_s(r["cached_steady_s"]),
                         f"{u / r['cached_cold_s']:.1f}x" if u else "–",
                         f"{u / r['cached_steady_s']:.0f}x" if u else "–"])
        out.append(f"### One discretized-EI forward+backward {title}, d={args.d}, "
                   f"device {args.device}\n")
        out.append(C.markdown_table([sweep, "Uncached", "Cached (incl. encode)",
                                     "Cached (steady)", "Speed-up (incl. encode)",
                                     "Speed-up (steady)"], rows))
        out.append("")
    return "\n".join(out)


def plot(results, path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, sweep, xl in ((axes[0], "n", f"training points n (m={args.m})"),
                          (axes[1], "m", f"candidates m (n={args.n})")):
        rs = [r for r in results if r["sweep"] == sweep]
        for key, st, label in (("uncached_s", "-s", "uncached"),
                               ("cached_cold_s", "-o", "cached (incl. encode)"),
                               ("cached_steady_s", "--o", "cached (steady)")):
            pts = [(r["x"], r[key]) for r in rs if r.get(key)]
            if pts:
                ax.loglog(*zip(*pts), st, label=label)
        ax.set(xlabel=xl, ylabel="seconds per EI forward+backward",
               title=f"d={args.d}, {args.device}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
