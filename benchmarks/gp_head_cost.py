#!/usr/bin/env python3
r"""What the GP head costs at inference: context encode + fit, and one acquisition call.

For each context size `n` (d = 6, float64 data, one torch thread), it prints the time to
build a ``PFNModel`` and encode its context (the GP head's fit and particle refinement
included; best of the 2nd and 3rd builds, so the float64 copy of the network is warm) and
the median time of one LogEI value + gradient on 512 points with the cached context. For a
network with a GP head both with the refinement (as shipped) and without it; pass a second
checkpoint (``--compare``, e.g. the stage-5 files from git) to time it in the same run.

``--warm-chain`` times instead what a BO loop pays per iteration: the warm-started encode of
`n` rows from the previous iteration's model at the end of a chain of warm-started fits
(one row added each, Hartmann-6 at random points), with the shipped
``gp_refine_warm_tol`` and with 0 (always ``gp_refine_warm_steps`` steps), each its own
chain (``--setting gp_reuse_logits_growth``: the logits reuse at its shipped value and off,
so the network runs once per 10% growth or every fit).

Usage::

    .venv/bin/python benchmarks/gp_head_cost.py [--checkpoint PATH] [--compare PATH]
    .venv/bin/python benchmarks/gp_head_cost.py --warm-chain [--ns 50 100 200] \
        [--setting gp_reuse_logits_growth]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def time_network(net, label: str, ns, d: int = 6, points: int = 512) -> None:
    import torch
    from botorch.acquisition import LogExpectedImprovement
    from botorch_community.models.prior_fitted_network import PFNModel

    g = torch.Generator().manual_seed(0)
    for n in ns:
        X = torch.rand(n, d, generator=g, dtype=torch.float64)
        Y = (X - 0.5).pow(2).sum(-1, keepdim=True)
        builds, calls = [], []
        for _ in range(3):
            t = time.perf_counter()
            model = PFNModel(X, Y, model=net)
            with model.cache_training_context():
                acq = LogExpectedImprovement(model, best_f=Y.max())
                acq(torch.rand(1, 1, d, generator=g, dtype=torch.float64))
                builds.append(time.perf_counter() - t)
                for _ in range(5):
                    Xt = torch.rand(points, 1, d, generator=g, dtype=torch.float64)
                    Xt.requires_grad_(True)
                    t0 = time.perf_counter()
                    acq(Xt).sum().backward()
                    calls.append(time.perf_counter() - t0)
        calls.sort()
        print(f"| {label} | {n} | {1000 * min(builds[1:]):.0f} ms | "
              f"{1000 * calls[len(calls) // 2]:.0f} ms |", flush=True)


def time_warm_chain(net, ns, chain: int = 30, timed: int = 10,
                    setting: str = "gp_refine_warm_tol") -> None:
    r"""Warm encodes along a chain of BO-like fits, with the shipped value of the
    inference `setting` and with 0; the median and mean over the `timed` fits."""
    import statistics
    import warnings

    import torch
    from botorch.test_functions import Hartmann
    from botorch_community.pfn import gp_head

    f, shipped = Hartmann(dim=6, negate=True), net.config
    tols = [getattr(shipped, setting), 0.0]
    steps = [0]  # refinement steps so far (conditionings with gradients)
    inner = gp_head.GPHead._condition

    def counted(self, *a, **k):
        steps[0] += bool(k.get("with_grad"))
        return inner(self, *a, **k)

    print(f"| n | warm encode (median / mean), {setting} = {tols[0]:g} | steps | with 0 | "
          "steps | ratio of means |\n|---|---|---|---|---|---|")
    gp_head.GPHead._condition = counted
    try:
        for n in ns:
            X = torch.rand(n + timed, 6, generator=torch.Generator().manual_seed(n),
                           dtype=torch.float64)
            Y = f(X).unsqueeze(-1)
            out = {t: ([], []) for t in tols}
            for tol in tols:  # each its own chain: n - chain rows fresh, then warm fits
                net.config = shipped.replace(**{setting: tol})
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    last = steps[0]
                    for m, _, dt in C.warm_chain(X, Y, max(1, n - chain), n + timed, model=net):
                        if m >= n:
                            out[tol][0].append(dt)
                            out[tol][1].append(steps[0] - last)
                        last = steps[0]
            (a, sa), (b, sb) = out[tols[0]], out[0.0]
            ma, mb = statistics.mean(a), statistics.mean(b)
            print(f"| {n}-{n + timed - 1} | {1000 * statistics.median(a):.0f} / {1000 * ma:.0f} "
                  f"ms | {statistics.mean(sa):.1f} | {1000 * statistics.median(b):.0f} / "
                  f"{1000 * mb:.0f} ms | {statistics.mean(sb):.1f} | {ma / mb:.2f}x |",
                  flush=True)  # fmt: skip
    finally:
        gp_head.GPHead._condition = inner
        net.config = shipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="network (default: the shipped one)")
    p.add_argument("--compare", default=None, help="a second checkpoint to time alongside")
    p.add_argument("--ns", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm-chain", action="store_true",
                   help="time warm-started encodes along a BO-like chain of fits")
    p.add_argument("--setting", default="gp_refine_warm_tol",
                   choices=["gp_refine_warm_tol", "gp_reuse_logits_growth"],
                   help="with --warm-chain: the inference setting timed at its shipped "
                        "value and at 0")
    args = p.parse_args()
    C.set_threads(args.threads)
    from botorch_community.pfn import load_pretrained

    if args.warm_chain:
        time_warm_chain(load_pretrained(args.checkpoint), args.ns, setting=args.setting)
        return

    print("| network | n | encode + fit | LogEI value + grad, 512 points |\n|---|---|---|---|")
    net = load_pretrained(args.checkpoint)
    if net.gp_head:
        steps, min_context = net.config.gp_refine_steps, net.config.gp_refine_min_context
        time_network(net, f"GP head, refined ({steps} steps from n = {min_context})", args.ns)
        net.set_gp_refinement(0)
        time_network(net, "GP head, not refined", args.ns)
        net.set_gp_refinement(steps, min_context)
    else:
        time_network(net, "no GP head", args.ns)
    if args.compare:
        time_network(load_pretrained(args.compare), Path(args.compare).name, args.ns)


if __name__ == "__main__":
    main()
