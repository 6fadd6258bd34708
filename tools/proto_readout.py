#!/usr/bin/env python3
r"""CPU prototype: does a *target readout* head fix the PFN's interpolation error?

The shipped network misses observed values of noise-free objectives by 0.04 to 0.37
standard deviations of y (``benchmarks/interpolation.py``), and more data at observed
inputs did not teach it to do better (model card, "Clustered and repeated inputs").
The hypothesis: a bar distribution decoded from a token cannot place a peak at an
arbitrary observed value precisely. ``PFNTransformer(target_readout=True)`` adds a head
that reads the context targets directly (:meth:`PFNTransformer.target_readout_params`):

.. math::
    \hat y(x) = \sum_k w_k y_k,\quad w = \mathrm{softmax}_k\big(-\textstyle\sum_j
        s_j(z) (x_j - x_{kj})^2\big),

with per-dimension scales `s` predicted from the test token's final state `z`, and mixes
a discretised Gaussian `N(yhat + delta, sigma^2)` into the bar distribution with weight
`sigmoid(omega)`; `(delta, log sigma, omega)` come from `z`, `log` of the readout's local
spread and `log` of the nearest weighted squared distance. At an observed input of
noise-free data the readout can return `y_k` exactly.

Two small networks (metric attention, d <= 2, n <= 60) train from scratch on the same
prior batches, one with the head, one without; the script prints eval NLL against the
oracle per context size (noise-free and noisy datasets apart) and the error at the
observations (test rows = the context rows, noise-free datasets). Ratios within one run
are the result.

With ``--warm-steps W`` a plain network first trains `W` steps; the readout variant then
grows the head into it (mixing weight starting at ``sigmoid(--init-logit)``, its parameters
at ``--grown-lr-mult`` times the learning rate) and both continue for ``--steps``: does the
head grow in a warm start, as the GPU fine-tune of the shipped network needs?

Usage::

    PYTHONPATH=$PWD python tools/proto_readout.py --steps 3000 --out /tmp/proto   # ~20 min
    PYTHONPATH=$PWD python tools/proto_readout.py --warm-steps 2000 --steps 1500 --init-logit -4
    PYTHONPATH=$PWD python tools/proto_readout.py --steps 20 --small               # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from botorch_community.pfn.bar_distribution import bar_nll
from botorch_community.pfn.train import PriorSampler, fit_borders, load_config, lr_at
from botorch_community.pfn.transformer import PFNTransformer

NOISE_FREE_VAR = 1e-3  # as in quality_nll.py: noise variance below this is "noise-free"


def make_config(args) -> dict:
    return load_config({
        "model": dict(num_features=2, emsize=args.emsize, nlayers=args.nlayers, nhead=4,
                      nhid=2 * args.emsize, num_buckets=1000, metric_attention=True),
        "prior": dict(num_features=2, max_dim=2, local_x_prob=0.15),
        "train": dict(batch_size=args.batch, seq_len=args.max_n + 20, min_context=0,
                      max_context=args.max_n, large_context_share=0.5,
                      large_context_min=args.max_n // 4, steps=args.steps, lr=1e-3,
                      warmup_steps=max(1, args.steps // 20), min_lr_ratio=0.05,
                      missing_prob=0.0, seed=args.seed, border_samples=200_000),
    })  # fmt: skip


def eval_sets(sampler: PriorSampler, ns: list[int], datasets: int) -> list:
    out = []
    for j, n in enumerate(ns):
        (tx, ty, sx, sy), (mean, std), batch = sampler.sample(
            j, stream=2, n=n, batch_size=datasets, seq_len=n + 30, missing=False)
        mu, var = batch.oracle_predictive(n)
        mu, var = (mu - mean.double()) / std.double(), var / std.double() ** 2
        oracle = 0.5 * (math.log(2 * math.pi) + var.log() + (sy.double() - mu) ** 2 / var)
        free = batch.hypers.noise_var.view(-1) < NOISE_FREE_VAR  # `b`
        out.append((n, tx, ty, sx, sy, oracle.squeeze(-1).mean(-1), free))
    return out


@torch.no_grad()
def gp_share(net, tx, ty) -> float:
    r"""Mean mixing weight of a GP head at the context rows (networks with ``gp_head``)."""
    token, h = net._reference_token_and_states(tx, ty, tx)
    fit = net.gp.fit(token, tx, ty)
    mu, var = net.gp.predict(fit, tx)
    return float(torch.sigmoid(net.gp._omega(h, mu, var, fit)).mean())


@torch.no_grad()
def evaluate(net, sets, borders) -> dict:
    net.eval()
    res = {}
    for n, tx, ty, sx, sy, oracle, free in sets:
        nll = bar_nll(net(tx, ty, sx).float(), sy, borders).mean(-1).squeeze(-1)  # `b`
        gap = nll.double() - oracle
        row = {"gap_all": float(gap.mean())}
        for name, mask in (("gap_free", free), ("gap_noisy", ~free)):
            row[name] = float(gap[mask].mean()) if mask.any() else float("nan")
        if n > 0 and free.any():  # at the observations of noise-free datasets
            logits = net(tx[free], ty[free], tx[free]).float()
            p = torch.softmax(logits, -1)
            centers = 0.5 * (borders[1:] + borders[:-1])
            mean = p @ centers
            var = (p @ centers.square() - mean.square()).clamp_min(0)
            y = ty[free].squeeze(-1)
            row["err_obs"] = float((mean - y).square().mean().sqrt())
            row["std_obs"] = float(var.sqrt().median())
            row["nll_obs"] = float(bar_nll(logits, ty[free], borders).mean())
            if net.target_readout:
                h = net.reference_states(tx[free], ty[free], tx[free])
                omega = net.target_readout_params(h, tx[free], tx[free], ty[free])[2]
                row["mix_obs"] = float(torch.sigmoid(omega).mean())
        if net.gp_head and n > 0 and free.any():  # GP share at the observations
            row["mix_obs"] = gp_share(net, tx[free], ty[free])
        res[n] = row
    net.train()
    return res


def train_steps(net, sampler, borders, steps: int, t: dict, first_step: int, lr_mult: dict,
                sets, tag: str, log: list) -> None:
    r"""`steps` AdamW steps on the data of steps `first_step, ...` with one cosine
    schedule (`t`: lr, warm-up, min_lr_ratio); parameters named in `lr_mult` get that
    multiple of the learning rate. Evaluates five times."""
    groups = [{"params": [], "mult": 1.0}]
    for name, prm in net.named_parameters():
        mult = next((v for k, v in lr_mult.items() if name.startswith(k)), 1.0)
        if mult == 1.0:
            groups[0]["params"].append(prm)
        else:
            groups.append({"params": [prm], "mult": mult})
    opt = torch.optim.AdamW(groups, lr=t["lr"], weight_decay=0.01)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, t) * g["mult"]
        (tx, ty, sx, sy), _, _ = sampler.sample(first_step + step)
        loss = net(tx, ty, sx, test_Y=sy).float().mean()  # = bar_nll of the output
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            ev = evaluate(net, sets, borders)
            log.append({"step": first_step + step + 1, "phase": tag, "eval": ev})
            summary = " ".join(
                f"n={n}: {r['gap_all']:.3f}"
                + (f" err@obs {r['err_obs']:.3f}" if "err_obs" in r else "")
                + (f" mix@obs {r['mix_obs']:.3f}" if "mix_obs" in r else "")
                for n, r in ev.items()
            )
            print(f"[{tag}] step {first_step + step + 1} {time.time() - t0:.0f}s "
                  f"loss {loss.item():.4f} gap to oracle {summary}", flush=True)


def setup(args) -> tuple:
    r"""Config, prior sampler, bucket borders and eval sets of a prototype run (the same
    for every prototype with the same arguments, so runs compare step by step)."""
    if args.small:
        args.batch, args.max_n, args.emsize, args.nlayers = 8, 20, 32, 2
    torch.set_num_threads(1)
    cfg = make_config(args)
    sampler = PriorSampler(cfg, torch.device("cpu"))
    borders = fit_borders(sampler, 1000, 20_000 if args.small else 200_000)
    ns = [5, 20, args.max_n] if not args.small else [5, 20]
    return cfg, sampler, borders, eval_sets(sampler, ns, 16 if args.small else 256)


def prototype_parser(doc: str) -> argparse.ArgumentParser:
    r"""An argument parser with the options every prototype shares (run length, batch,
    largest context, network size, seed)."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-n", type=int, default=60)
    p.add_argument("--emsize", type=int, default=64)
    p.add_argument("--nlayers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    return p


def main() -> None:
    p = prototype_parser(__doc__)
    p.add_argument("--variant", choices=["both", "plain", "readout"], default="both")
    p.add_argument("--init-logit", type=float, default=-2.0,
                   help="initial mixing logit of the readout (the first runs used -2)")
    p.add_argument("--warm-steps", type=int, default=0,
                   help="first train a plain network this many steps; then the readout "
                   "variant grows the head into it (a warm start, as on the GPU) and both "
                   "continue for --steps at --finetune-lr")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--grown-lr-mult", type=float, default=20.0)
    p.add_argument("--init-scale", type=float, default=100.0,
                   help="initial per-dimension scale of the readout's metric")
    p.add_argument("--small", action="store_true", help="smoke run")
    p.add_argument("--out", default=None, help="write OUT_<variant>.json")
    args = p.parse_args()
    cfg, sampler, borders, sets = setup(args)
    variants = ["plain", "readout"] if args.variant == "both" else [args.variant]
    m, t = cfg["model"], cfg["train"]
    for variant in variants:
        torch.manual_seed(args.seed)
        log: list = []
        readout = variant == "readout"
        if args.warm_steps > 0:
            net = PFNTransformer(borders=borders, **m)
            train_steps(net, sampler, borders, args.warm_steps, t, 0, {}, sets, "base", log)
            if readout:
                grown = PFNTransformer(borders=borders, target_readout=True,
                                       readout_init_logit=args.init_logit, **m)
                grown.load_state_dict(net.state_dict(), strict=False)
                with torch.no_grad():
                    grown.readout_scale.bias.fill_(math.log(args.init_scale))
                net = grown
            t2 = {**t, "lr": args.finetune_lr, "warmup_steps": max(1, args.steps // 20)}
            mult = {"readout_": args.grown_lr_mult}
            train_steps(net, sampler, borders, args.steps, t2, args.warm_steps, mult, sets,
                        variant, log)
        else:
            net = PFNTransformer(borders=borders, target_readout=readout,
                                 readout_init_logit=args.init_logit, **m)
            train_steps(net, sampler, borders, args.steps, t, 0, {}, sets, variant, log)
        if args.out:
            with open(f"{args.out}_{variant}.json", "w") as f:
                json.dump({"args": vars(args), "log": log}, f, indent=1)
        final = log[-1]["eval"]
        print(f"\n| {variant} | n | gap all | gap noise-free | gap noisy | err@obs | std@obs "
              "| nll@obs | mix@obs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n, r in final.items():
            print(f"| {variant} | {n} | {r['gap_all']:.3f} | {r['gap_free']:.3f} | "
                  f"{r['gap_noisy']:.3f} | {r.get('err_obs', float('nan')):.4f} | "
                  f"{r.get('std_obs', float('nan')):.4f} | {r.get('nll_obs', float('nan')):.3f} "
                  f"| {r.get('mix_obs', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
