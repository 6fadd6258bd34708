#!/usr/bin/env python3
r"""Time one training step (forward + backward, bf16 autocast on CUDA) of the default
architecture: plain attention, metric attention in the direct form, and in the expanded
form (``PFNTransformer.metric_expanded``), with the peak memory of each. Ratios within
one run are the result; absolute times depend on the machine.

Usage::

    PYTHONPATH=$PWD python tools/profile_metric.py                 # CUDA, training shapes
    PYTHONPATH=$PWD python tools/profile_metric.py --small         # CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import torch

from botorch_community.pfn.testing import random_pfn


def time_step(net, batch, amp: bool, reps: int) -> tuple[float, float]:
    tx, ty, sx = batch
    dev = tx.device
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(reps + 2):  # two warm-up steps
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(tx, ty, sx)
        logits.float().logsumexp(-1).mean().backward()
        net.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    return 1000 * sorted(times)[len(times) // 2], peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny CPU run")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    dev = torch.device("cpu" if args.small or not torch.cuda.is_available() else "cuda")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as in training
    B, L, arch = (4, 40, dict(emsize=32, nlayers=2, nhead=4, nhid=48)) if args.small else (
        512, 250, dict(emsize=256, nlayers=8, nhead=4, nhid=512))
    print(f"device {dev}, batch {B} x {L} rows")
    print("| d | n | plain ms | metric ms | expanded ms | metric / plain | expanded / plain "
          "| peak GiB plain / metric / expanded |")
    print("|---|---|---|---|---|---|---|---|")
    for d, n in ((6, L * 4 // 5), (18, L * 4 // 5), (6, L // 5)):
        g = torch.Generator(device=dev).manual_seed(0)
        X = torch.rand(B, L, d, generator=g, device=dev)
        Y = torch.randn(B, L, 1, generator=g, device=dev)
        batch = (X[:, :n], Y[:, :n], X[:, n:])
        row = {}
        for name, metric, expanded in (("plain", False, False), ("metric", True, False),
                                       ("expanded", True, True)):
            torch.manual_seed(0)
            net = random_pfn(num_features=18, num_buckets=1000, metric_attention=metric,
                             **arch).to(dev).train()
            net.metric_expanded = expanded
            row[name] = time_step(net, batch, dev.type == "cuda", args.reps)
            del net
        pl, me, ex = (row[k][0] for k in ("plain", "metric", "expanded"))
        mem = " / ".join(f"{row[k][1]:.1f}" for k in ("plain", "metric", "expanded"))
        print(f"| {d} | {n} | {pl:.1f} | {me:.1f} | {ex:.1f} | {me / pl:.2f} | {ex / pl:.2f} "
              f"| {mem} |", flush=True)


if __name__ == "__main__":
    main()
