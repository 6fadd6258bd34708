#!/usr/bin/env python3
r"""Pick ``train.cells_per_batch`` for a cells network on this GPU: time one training
step (bf16 autocast, forward + backward) at the largest d and context of a config for
a few batch sizes, and print the largest that keeps peak memory under a share of the
card (the last line is that number, for shell scripts).

    python tools/highd_probe.py --config highd [--share 0.7]
"""

from __future__ import annotations

import argparse
import time

import torch

from botorch_community.pfn.cell_transformer import build_network
from botorch_community.pfn.config import PFNConfig
from botorch_community.pfn.priors.gp import GPPriorConfig, sample_gp_prior
from botorch_community.pfn.train import load_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="highd")
    ap.add_argument("--share", type=float, default=0.7, help="of the card's memory")
    ap.add_argument("--cells", type=int, nargs="+", default=[300_000, 600_000, 900_000, 1_200_000])
    a = ap.parse_args()
    cfg = load_config(a.config)
    dev = torch.device("cuda")
    net = build_network(PFNConfig.from_dict(cfg["model"])).to(dev).train()
    prior = GPPriorConfig.from_dict(cfg["prior"])
    t = cfg["train"]
    L, n, d = t["seq_len"], t["max_context"], prior.max_dim
    total = torch.cuda.get_device_properties(dev).total_memory
    best = a.cells[0]
    for cells in a.cells:
        b = max(1, min(t["batch_size"], cells // (L * (d + 1))))
        batch = sample_gp_prior(b, L, prior, dim=d, generator=torch.Generator(device=dev).manual_seed(0))
        X, Y = batch.X.float(), batch.Y.float()
        Y = (Y - Y[:, :n].mean(1, keepdim=True)) / Y[:, :n].std(1, keepdim=True)
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            for i in range(3):
                if i == 1:
                    torch.cuda.synchronize(dev)
                    t0 = time.time()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = net(X[:, :n], Y[:, :n], X[:, n:], test_Y=Y[:, n:]).float().mean()
                loss.backward()
                net.zero_grad(set_to_none=True)
            torch.cuda.synchronize(dev)
        except torch.OutOfMemoryError:
            print(f"cells {cells}: batch {b} at d={d}, n={n}: out of memory", flush=True)
            break
        peak = torch.cuda.max_memory_allocated(dev)
        step = (time.time() - t0) / 2
        print(f"cells {cells}: batch {b} at d={d}, n={n}: {step * 1e3:.0f} ms/step, "
              f"peak {peak / 2**30:.1f} GiB ({peak / total:.0%})", flush=True)
        if peak > a.share * total:
            break
        best = cells
        del loss
        torch.cuda.empty_cache()
    print(best)


if __name__ == "__main__":
    main()
