#!/usr/bin/env python3
r"""Fast check of how far PFN checkpoints are from the oracle on held-out prior data.

For each `(d, n)` cell, ``--datasets`` datasets are drawn from the GP prior (the first
checkpoint's prior metadata, else ``configs/default.json``; a seed the training streams
never use), and every checkpoint predicts ``--test-points`` test targets from `n`
context rows. Reported per checkpoint: the mean bar-distribution NLL of the standardised
targets minus the oracle NLL (the exact GP predictive with the true hyperparameters,
standardised the same way), split into *noise-free* datasets (noise variance
`< 1e-3`) and *noisy* ones. All checkpoints see the same datasets, so their gaps compare
pairwise; the SNIS Bayes reference and the SingleTaskGP baseline live in
``quality_nll.py``, which is much slower. Runs on CPU or CUDA (whole cells as one
batch), so it can rank candidate checkpoints right after training.

Outputs ``<out>.json`` and ``<out>.md``.

Usage::

    .venv/bin/python benchmarks/prior_gap.py default runs/a/model [--device cuda]
        [--datasets 256] [--dims 1 2 4 6 10] [--ns 5 10 25 50 100 200]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NOISE_FREE_BELOW = 1e-3


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="'default' or checkpoint paths")
    p.add_argument("--device", default="cpu")
    p.add_argument("--datasets", type=int, default=256)
    p.add_argument("--test-points", type=int, default=50)
    p.add_argument("--dims", type=int, nargs="+", default=[1, 2, 4, 6, 10])
    p.add_argument("--ns", type=int, nargs="+", default=[5, 10, 25, 50, 100, 200])
    p.add_argument("--seed", type=int, default=424242)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="output stem (default results/prior_gap)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    C.use_checkout()
    C.set_threads(args.threads)
    import torch
    from tqdm import tqdm

    from botorch_community.pfn.bar_distribution import bar_nll
    from botorch_community.pfn.checkpoint import load_pretrained
    from botorch_community.pfn.priors.gp import GPPriorConfig, sample_gp_prior
    from botorch_community.pfn.standardize import context_moments

    dev = torch.device(args.device)
    nets = {}
    for c in args.checkpoints:
        net = load_pretrained(None if c == "default" else c, device=dev)
        nets[c] = net
    meta = getattr(next(iter(nets.values())), "checkpoint_metadata", {}) or {}
    if "prior" in meta:
        prior_dict = meta["prior"]
    else:
        cfg = json.loads((C.REPO_ROOT / "botorch_community/pfn/configs/default.json").read_text())
        prior_dict = cfg["prior"]
    prior = GPPriorConfig.from_dict(prior_dict)
    cells = [(d, n) for d in args.dims for n in args.ns]
    rows = []
    t0 = time.time()
    for d, n in tqdm(cells, desc="prior_gap", unit="cell"):
        g = torch.Generator(device=dev).manual_seed(args.seed + 1000 * d + n)
        b = sample_gp_prior(args.datasets, n + args.test_points, prior, dim=d, generator=g)
        tX, tY, sX, sY = b.X[:, :n], b.Y[:, :n], b.X[:, n:], b.Y[:, n:]
        mean, std = context_moments(tY)
        mu, var = b.oracle_predictive(n)
        mu = (mu - mean.double()) / std.double()
        var = var / std.double() ** 2
        ys = ((sY - mean) / std).double()
        oracle = (0.5 * (math.log(2 * math.pi) + var.log() + (ys - mu) ** 2 / var)).mean((-1, -2))
        free = b.hypers.noise_var < NOISE_FREE_BELOW
        row = {"d": d, "n": n, "noise_free": int(free.sum()), "noisy": int((~free).sum()),
               "oracle": float(oracle.mean())}  # fmt: skip
        for name, net in nets.items():
            with torch.no_grad():
                logits = net(tX, (tY - mean) / std, sX)
            nll = bar_nll(logits.float(), (sY - mean) / std, net.borders).mean(-1).double()
            gap = nll - oracle
            row[name] = {
                "gap": float(gap.mean()),
                "gap_noise_free": float(gap[free].mean()) if free.any() else float("nan"),
                "gap_noisy": float(gap[~free].mean()) if (~free).any() else float("nan"),
            }
        rows.append(row)
    names = list(nets)
    summary = {}
    for name in names:
        summary[name] = {
            k: sum(r[name][k] for r in rows) / len(rows)
            for k in ("gap", "gap_noise_free", "gap_noisy")
        }
    lines = [
        f"### PFN - oracle NLL gap on held-out prior data ({args.datasets} datasets x "
        f"{args.test_points} test points per cell, standardised targets, nats)\n",
        "| d | n | " + " | ".join(f"{c} all / noise-free / noisy" for c in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells_txt = [
            f"{r[c]['gap']:.3f} / {r[c]['gap_noise_free']:.3f} / {r[c]['gap_noisy']:.3f}"
            for c in names
        ]
        lines.append(f"| {r['d']} | {r['n']} | " + " | ".join(cells_txt) + " |")
    lines.append(
        "| mean | | " + " | ".join(
            f"**{summary[c]['gap']:.3f}** / {summary[c]['gap_noise_free']:.3f} / "
            f"{summary[c]['gap_noisy']:.3f}" for c in names) + " |"
    )
    md = "\n".join(lines) + "\n"
    print(md)
    stem = Path(args.out) if args.out else C.BENCH_DIR / "results" / "prior_gap"
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(benchmark="prior_gap", machine=C.machine_info(dev.type), args=vars(args),
                   elapsed_s=time.time() - t0, summary=summary, cells=rows)  # fmt: skip
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    stem.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
