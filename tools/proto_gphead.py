#!/usr/bin/env python3
r"""CPU prototype: a GP output head with hyperparameters amortised by the network.

The Bayes predictive a PFN approximates is, under a GP prior, a mixture of GP predictives
over the hyperparameter posterior:

.. math::
    p(y \mid x, D) = \textstyle\int p(y \mid x, D, \theta)\, p(\theta \mid D)\, d\theta
        \approx \sum_j \pi_j\, \mathcal N(y;\ \mu_j(x), v_j(x)).

``benchmarks/quality_nll.py`` shows the shipped network's gap to the oracle is its
inference, not its output grid (the oracle on the bar grid is 0.008 nats above the oracle),
and the gap is largest for noise-free data at large `n`, where a GP predictive is sharp
and exact at the observations. ``PFNTransformer(gp_head=True)`` (``botorch_community/pfn/gp_head.py``)
lets the network propose `J` hyperparameter particles `theta_j` (ARD lengthscales,
outputscale, noise; Matérn-5/2 for even `j`, RBF for odd `j`) from the final state of the
learned context token, weights them by a learned logit plus their log marginal likelihood
(so the weights follow the posterior when the proposals are good), and mixes the
discretised GP mixture into the bar distribution with a weight from each test token. The
GP algebra runs in float64 (Cholesky of `n x n`); the training loss evaluates the GP
mixture at the target buckets only.

A network with the head trains from scratch on the same batches as the plain network of
``tools/proto_readout.py`` (same config, seed and schedule), and the script prints the same
evaluation (gap to the oracle per `n`, noise-free and noisy apart; error at the
observations), so the figures compare with ``benchmarks/results/proto_readout_plain.json``
at the same steps.

Usage::

    PYTHONPATH=$PWD python tools/proto_gphead.py --steps 3000 --out /tmp/proto_gp
    PYTHONPATH=$PWD python tools/proto_gphead.py --steps 20 --small   # smoke
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proto_readout import prototype_parser, setup, train_steps  # noqa: E402

from botorch_community.pfn.transformer import PFNTransformer  # noqa: E402


def main() -> None:
    p = prototype_parser(__doc__)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--init-logit", type=float, default=-2.0)
    p.add_argument("--no-metric", action="store_true",
                   help="without metric attention (3.4x the GPU steps per minute)")
    p.add_argument("--warm-steps", type=int, default=0,
                   help="first train a plain network this many steps, then grow the GP head "
                   "into it (a warm start, as configs/default_gp.json does on the GPU) and "
                   "continue for --steps at --finetune-lr; --variant plain continues without it")
    p.add_argument("--variant", choices=["gp", "plain"], default="gp")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--grown-lr-mult", type=float, default=20.0)
    p.add_argument("--small", action="store_true", help="smoke run")
    p.add_argument("--out", default=None, help="write OUT_gphead.json")
    args = p.parse_args()
    cfg, sampler, borders, sets = setup(args)
    m, t = cfg["model"], cfg["train"]
    if args.no_metric:
        m = {**m, "metric_attention": False}
    torch.manual_seed(args.seed)
    log: list = []
    tag = "gphead" if args.variant == "gp" else "plain"
    if args.warm_steps > 0:
        net = PFNTransformer(borders=borders, **m)
        train_steps(net, sampler, borders, args.warm_steps, t, 0, {}, sets, "base", log)
        if args.variant == "gp":
            grown = PFNTransformer(borders=borders, gp_head=True, gp_particles=args.particles,
                                   gp_init_logit=args.init_logit, **m)
            grown.load_state_dict(net.state_dict(), strict=False)
            net = grown
        t2 = {**t, "lr": args.finetune_lr, "warmup_steps": max(1, args.steps // 20)}
        train_steps(net, sampler, borders, args.steps, t2, args.warm_steps,
                    {"gp.": args.grown_lr_mult}, sets, tag, log)
    else:
        net = PFNTransformer(borders=borders, gp_head=True, gp_particles=args.particles,
                             gp_init_logit=args.init_logit, **m)
        train_steps(net, sampler, borders, args.steps, t, 0, {}, sets, "gphead", log)
    if args.out:
        with open(f"{args.out}_{tag}.json", "w") as f:
            json.dump({"args": vars(args), "log": log}, f, indent=1)
    print(f"\n| {tag} | n | gap all | gap noise-free | gap noisy | err@obs | std@obs | nll@obs |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in log[-1]["eval"].items():
        print(f"| {tag} | {n} | {r['gap_all']:.3f} | {r['gap_free']:.3f} | "
              f"{r['gap_noisy']:.3f} | {r.get('err_obs', float('nan')):.4f} | "
              f"{r.get('std_obs', float('nan')):.4f} | {r.get('nll_obs', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
