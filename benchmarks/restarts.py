#!/usr/bin/env python3
r"""The restarts table: what the cached training context buys per acquisition call.

For each input dimension `d` and number of candidates `m` (`m = R` restarts of
``optimize_acqf`` with q = 1, or a raw-sample batch of 256 / 1024), one
discretized-EI forward + backward over `m x 1 x d` candidates with `n` training points,
on one random network (emsize 256, 6 layers, 4 heads, nhid 512, 1000 buckets; one token
per row, or with ``--tokens cells`` one per input dimension of each row):

* cached (encode included): a fresh ``with model.cache_training_context():`` block per
  call, so the one context encoding is inside the timed call;
* cached (steady state): further calls in the same block (context already encoded), what
  every L-BFGS step after the first pays;
* uncached: ``PFNModel(..., cache_context=False)``, the context re-encoded with and
  expanded to every candidate (the reference path);
* upstream (``--upstream``): botorch 0.18.1's ``PFNModelWithPendingPoints`` + upstream
  ``DiscretizedExpectedImprovement`` on a ``pfns`` 0.4.2 ``TableTransformer`` of the same
  width and depth, in its own virtualenv (``benchmarks/.venv-upstream``), i.e. what
  users have today.

Every variant of every configuration runs in its own fresh subprocess: after a tiny
warm-up call (lazy initialisation), its first full-size call gives the peak memory
(CPU: growth of the peak RSS over the RSS before the call, and the absolute peak RSS;
CUDA: ``max_memory_allocated`` growth), then repeats give the time (median).
Ratios are always between variants measured in this one run.

Usage::

    .venv/bin/python benchmarks/restarts.py            # full table (CPU: ~15 min)
    .venv/bin/python benchmarks/restarts.py --quick    # smoke run (~1 min)
    .venv/bin/python benchmarks/restarts.py --upstream # also upstream (creates its venv)
    .venv/bin/python benchmarks/restarts.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
UPSTREAM_VENV = C.BENCH_DIR / ".venv-upstream"
NET = dict(emsize=256, nlayers=6, nhead=4, nhid=512, num_buckets=1000)

# Exact commands that create the upstream virtualenv (also in RESULTS.md).
UPSTREAM_SETUP = [
    [sys.executable, "-m", "venv", "--clear", str(UPSTREAM_VENV)],
    [str(UPSTREAM_VENV / "bin" / "pip"), "install", "-q", "torch==2.13.0"],
    [str(UPSTREAM_VENV / "bin" / "pip"), "install", "-q", "botorch==0.18.1", "pfns==0.4.2"],
]


# ----------------------------------------------------------------------- workers
def _warmup_and_data(torch, spec):
    torch.manual_seed(spec["seed"])
    dev = spec["device"]
    n, d, m = spec["n"], spec["d"], spec["m"]
    train_X = torch.rand(n, d, device=dev)
    train_Y = torch.randn(n, 1, device=dev)
    Xc = torch.rand(m, 1, d, device=dev)
    return train_X, train_Y, Xc


def _time_calls(call, spec, first_is_memory=True):
    r"""First call under PeakMemory, then more timed calls within the time budget."""
    dev = spec["device"]
    gc.collect()
    with C.PeakMemory(dev) as mem:
        times = [C.timed(call, dev)]
    t_start = time.perf_counter()
    # At least `repeats` calls within the budget; fast calls get up to 30 (robust medians).
    while (len(times) < spec["repeats"] or len(times) < 30) and (
        time.perf_counter() - t_start + times[-1] < spec["time_budget_s"]
    ):
        times.append(C.timed(call, dev))
    return times, mem


def worker_ours(spec: dict) -> dict:
    C.use_checkout()
    import torch
    import botorch_community
    from botorch_community.acquisition.discretized import DiscretizedExpectedImprovement
    from botorch_community.models.prior_fitted_network import PFNModel
    from botorch_community.pfn.testing import random_pfn

    dev = spec["device"]
    C.set_threads(spec.get("threads"))
    spec["loadavg_start"] = os.getloadavg()
    net = random_pfn(num_features=spec["num_features"], seed=0, tokens=spec.get("tokens", "rows"),
                     **NET).to(dev)
    train_X, train_Y, Xc = _warmup_and_data(torch, spec)
    cached = spec["variant"] == "cached"

    # Warm-up (lazy init of kernels/allocator) on a tiny problem, both code paths.
    for flag in (True, False):
        wm = PFNModel(train_X[:3], train_Y[:3], model=net, cache_context=flag)
        wa = DiscretizedExpectedImprovement(wm, best_f=train_Y[:3].max())
        xw = Xc[:1].clone().requires_grad_(True)
        wa(xw).sum().backward()
    del wm, wa, xw

    model = PFNModel(train_X, train_Y, model=net, cache_context=False)
    acqf = DiscretizedExpectedImprovement(model, best_f=train_Y.max())
    X = Xc.clone().requires_grad_(True)

    def fwd_bwd():
        X.grad = None
        acqf(X).sum().backward()

    out = dict(spec)
    if cached:

        def cold():
            with model.cache_training_context():
                fwd_bwd()

        times, mem = _time_calls(cold, spec)
        out["time_cold_s"] = C.median(times)
        out["times_cold_s"] = times
        enc0 = model.num_encodings
        with model.cache_training_context():
            fwd_bwd()  # encodes
            steady = []
            t_start = time.perf_counter()
            while len(steady) < 30 and (
                time.perf_counter() - t_start < spec["time_budget_s"] or len(steady) < 3
            ):
                steady.append(C.timed(fwd_bwd, dev))
        out["encodings_in_steady_block"] = model.num_encodings - enc0
        out["time_steady_s"] = C.median(steady)
        out["times_steady_s"] = steady
        # Exactness spot-check against the reference path on a few candidates.
        with torch.no_grad():
            k = min(4, X.shape[0])
            with model.cache_training_context():
                v_c = acqf(X[:k])
            ref = PFNModel(train_X, train_Y, model=net, cache_context=False)
            v_r = DiscretizedExpectedImprovement(ref, best_f=train_Y.max())(X[:k])
            out["max_abs_diff_vs_reference"] = float((v_c - v_r).abs().max())
    else:
        times, mem = _time_calls(fwd_bwd, spec)
        out["time_s"] = C.median(times)
        out["times_s"] = times
    out.update(mem_delta=mem.delta, mem_peak_abs=mem.peak_abs, mem_baseline=mem.baseline)
    out["module"] = botorch_community.__file__
    out["acqf_module"] = sys.modules[DiscretizedExpectedImprovement.__module__].__file__
    return out


def worker_upstream(spec: dict) -> dict:
    r"""Runs in benchmarks/.venv-upstream: upstream botorch_community + pfns 0.4.2."""
    import torch
    import botorch_community
    from botorch_community.acquisition.discretized import DiscretizedExpectedImprovement
    from botorch_community.models.prior_fitted_network import PFNModelWithPendingPoints

    if str(C.REPO_ROOT / "botorch_community") in botorch_community.__file__:
        raise RuntimeError("our botorch_community was imported in the upstream venv")
    import pfns

    dev = spec["device"]
    C.set_threads(spec.get("threads"))
    spec["loadavg_start"] = os.getloadavg()
    torch.manual_seed(0)
    pfn = _upstream_network(torch, spec["num_features"], NET).to(dev).eval()
    train_X, train_Y, Xc = _warmup_and_data(torch, spec)
    wm = PFNModelWithPendingPoints(train_X[:3], train_Y[:3], model=pfn, batch_first=False)
    xw = Xc[:1].clone().requires_grad_(True)
    DiscretizedExpectedImprovement(wm, best_f=train_Y[:3].max())(xw).sum().backward()
    del wm, xw
    model = PFNModelWithPendingPoints(train_X, train_Y, model=pfn, batch_first=False)
    acqf = DiscretizedExpectedImprovement(model, best_f=train_Y.max())
    X = Xc.clone().requires_grad_(True)

    def fwd_bwd():
        X.grad = None
        acqf(X).sum().backward()

    times, mem = _time_calls(fwd_bwd, spec)
    out = dict(spec)
    out.update(time_s=C.median(times), times_s=times)
    out.update(mem_delta=mem.delta, mem_peak_abs=mem.peak_abs, mem_baseline=mem.baseline)
    out["module"] = botorch_community.__file__
    out["pfns_version"] = getattr(pfns, "__version__", "0.4.2")
    return out


def _upstream_network(torch, num_features, net_cfg):
    r"""A random ``pfns`` 0.4.2 TableTransformer of the same width and depth, one token
    per row (PFNs4BO style: ``features_per_group = d``, no attention between features),
    with a 1000-bucket bar-distribution criterion attached (upstream's PFNModel reads
    ``pfn.criterion.borders``)."""
    from pfns.model.bar_distribution import FullSupportBarDistribution
    from pfns.model.transformer import TableTransformer

    B = net_cfg["num_buckets"]
    inner = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0, 1, B + 1)[1:-1])
    borders = torch.cat([torch.tensor([-6.0]), inner.clamp(-5.999, 5.999), torch.tensor([6.0])])
    net = TableTransformer(
        ninp=net_cfg["emsize"],
        nhead=net_cfg["nhead"],
        nhid=net_cfg["nhid"],
        nlayers=net_cfg["nlayers"],
        decoder_dict={"standard": (None, B)},
        features_per_group=num_features,
        attention_between_features=False,
        zero_init=False,
        batch_first=False,
    )
    net.criterion = FullSupportBarDistribution(borders)
    return net


# -------------------------------------------------------------------------- main
def ensure_upstream_venv() -> str:
    py = UPSTREAM_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run(
        [str(py), "-c", "import botorch, pfns; assert botorch.__version__.startswith('0.18.1')"],
        capture_output=True,
    ).returncode == 0
    if not ok:
        print("Creating the upstream virtualenv:", flush=True)
        for cmd in UPSTREAM_SETUP:
            print("  $", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    return str(py)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "restarts")
    p.add_argument("--upstream", action="store_true", help="also measure upstream (own venv)")
    p.add_argument("--upstream-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dims", type=int, nargs="+", default=[6, 100])
    p.add_argument("--candidates", type=int, nargs="+", default=[4, 8, 16, 32, 256, 1024])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--tokens", default="rows", choices=["rows", "cells"],
                   help="our network's token layout (cells: one token per input dimension)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--time-budget", type=float, default=8.0,
                   help="seconds of repeats per variant after the first call")
    p.add_argument("--max-call-s", type=float, default=150.0,
                   help="skip a slow variant whose estimated single call exceeds this")
    p.add_argument("--max-mem-gb", type=float, default=12.0,
                   help="skip a variant whose estimated peak memory exceeds this")
    args = p.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        fn = worker_upstream if spec["variant"] == "upstream" else worker_ours
        C.emit_result(fn(spec))
        return
    if args.quick:
        args.dims, args.candidates, args.n = [6], [4, 32, 256], 50
        args.repeats, args.time_budget = 3, 3.0
    from tqdm import tqdm

    stem = C.out_stem(args, "restarts")
    variants = [] if args.upstream_only else ["cached", "uncached"]
    upstream_py = None
    if args.upstream or args.upstream_only:
        upstream_py = ensure_upstream_venv()
        variants.append("upstream")
    tasks = [(d, m, v) for d in args.dims for m in args.candidates for v in variants]
    results, last_time = [], {}
    bar = tqdm(tasks, desc="restarts", unit="run")
    for d, m, v in bar:
        bar.set_postfix_str(f"d={d} m={m} {v}")
        spec = dict(variant=v, d=d, m=m, n=args.n, num_features=d, device=args.device,
                    repeats=args.repeats, time_budget_s=args.time_budget, seed=0, net=NET,
                    threads=args.threads, tokens=args.tokens)
        prev = last_time.get((d, v))
        if prev is not None and v != "cached":
            est = prev[1] * m / prev[0]  # cost ~ linear in the number of candidates
            est_mem = prev[2] * m / prev[0] if prev[2] else 0.0
            if est > args.max_call_s:
                results.append(dict(spec, skipped=f"estimated {est:.0f} s per call "
                                    f"(> --max-call-s {args.max_call_s:.0f})"))
                continue
            if est_mem > args.max_mem_gb * 2**30:
                results.append(dict(spec, skipped=f"estimated {est_mem / 2**30:.0f} GB peak "
                                    f"memory (> --max-mem-gb {args.max_mem_gb:.0f})"))
                continue
            spec["repeats"] = args.repeats if est < 10 else (2 if est < 40 else 1)
        r = C.run_worker(SCRIPT, spec, python=upstream_py if v == "upstream" else None,
                         timeout=max(600.0, 6 * args.max_call_s))
        r.setdefault("variant", v)
        results.append(dict(spec, **r))
        t = r.get("time_s", r.get("time_cold_s"))
        if t is not None:
            last_time[(d, v)] = (m, t, r.get("mem_delta") or 0)
        elif "error" in r:
            tqdm.write(f"[d={d} m={m} {v}] {r['error'][-400:]}")
        # keep what is measured so far (a run cut short still leaves its figures)
        C.write_json(stem.with_suffix(".partial.json"),
                     dict(benchmark="restarts", args=vars(args), network=NET, results=results))
    payload = dict(benchmark="restarts", machine=C.machine_info(args.device),
                   args=vars(args), network=NET, results=results)
    C.write_json(stem.with_suffix(".json"), payload)
    md = render(results, args)
    print(md)
    stem.with_suffix(".md").write_text(md + "\n")
    plot(results, stem.with_suffix(".png"), args)
    print(f"\nwrote {stem}.json, {stem}.md, {stem}.png")


def _get(results, d, m, v):
    for r in results:
        if r["d"] == d and r["m"] == m and r["variant"] == v:
            return r
    return None


def render(results, args) -> str:
    out = []
    dev = args.device
    mem_kind = "peak RSS growth of the call" if dev == "cpu" else "max_memory_allocated growth"
    for d in args.dims:
        rows = []
        for m in args.candidates:
            c, u, up = (_get(results, d, m, v) for v in ("cached", "uncached", "upstream"))
            label = f"{m} restarts" if m <= 32 else f"{m} raw samples"

            def t(r, key="time_s"):
                if r is None:
                    return None
                return r.get(key)

            def cell_t(r, key="time_s"):
                if r is None:
                    return "–"
                if "skipped" in r:
                    return "skipped*"
                if "error" in r:
                    return "error"
                return C.fmt_s(r.get(key))

            tc, ts, tu = t(c, "time_cold_s"), t(c, "time_steady_s"), t(u)
            sp_cold = f"{tu / tc:.1f}x" if tu and tc else "–"
            sp_steady = f"{tu / ts:.0f}x" if tu and ts else "–"
            mc = c.get("mem_delta") if c else None
            mu = u.get("mem_delta") if u else None
            saved = f"{100 * (1 - mc / mu):.1f}%" if mc is not None and mu else "–"
            ma_c = c.get("mem_peak_abs") if c else None
            ma_u = u.get("mem_peak_abs") if u else None
            saved_abs = f"{100 * (1 - ma_c / ma_u):.1f}%" if ma_c and ma_u else "–"
            row = [label, cell_t(u), cell_t(c, "time_cold_s"), cell_t(c, "time_steady_s"),
                   sp_cold, sp_steady,
                   C.fmt_mb(mu) if u and "skipped" not in u else "–", C.fmt_mb(mc), saved,
                   f"{C.fmt_mb(ma_u)} / {C.fmt_mb(ma_c)}" if ma_u else f"– / {C.fmt_mb(ma_c)}",
                   saved_abs]
            if args.upstream or args.upstream_only:
                row += [cell_t(up), C.fmt_mb(up.get("mem_delta")) if up else "–",
                        f"{t(up) / tc:.0f}x" if t(up) and tc else "–"]
            rows.append(row)
        header = ["Candidates", "Uncached", "Cached (incl. encode)", "Cached (steady)",
                  "Speed-up (incl. encode)", "Speed-up (steady)", "Uncached mem",
                  "Cached mem", "Mem saved", "Peak RSS uncached / cached", "Saved (abs.)"]
        if args.upstream or args.upstream_only:
            header += ["Upstream today", "Upstream mem", "Upstream / cached (incl. encode)"]
        out.append(f"### d = {d}, n = {args.n}, network emsize 256 / 6 layers / 4 heads / "
                   f"nhid 512 / 1000 buckets (random weights), device {dev}\n")
        out.append(C.markdown_table(header, rows))
        out.append(f"\nTimes: one discretized-EI forward + backward over `m x 1 x {d}` "
                   f"candidates, median of repeats. Memory: {mem_kind}, each variant in "
                   "its own fresh process; 'abs.' = absolute peak RSS of that process "
                   "(includes Python, torch and the network).")
        skipped = [r for r in results if r["d"] == d and "skipped" in r]
        for r in skipped:
            out.append(f"\n\\* {r['variant']}, {r['m']} candidates: not run, {r['skipped']}.")
        out.append("")
    return "\n".join(out)


def plot(results, path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {("cached", "time_cold_s"): ("cached (incl. encode)", "-o"),
              ("cached", "time_steady_s"): ("cached (steady)", "--o"),
              ("uncached", "time_s"): ("uncached", "-s"),
              ("upstream", "time_s"): ("upstream today", "-^")}
    for d in args.dims:
        for (v, key), (label, st) in styles.items():
            pts = [(r["m"], r[key]) for r in results
                   if r["d"] == d and r["variant"] == v and r.get(key)]
            if pts:
                axes[0].loglog(*zip(*pts), st, label=f"d={d} {label}")
        for v, st in (("cached", "-o"), ("uncached", "-s"), ("upstream", "-^")):
            pts = [(r["m"], r["mem_delta"] / 2**20) for r in results
                   if r["d"] == d and r["variant"] == v and r.get("mem_delta")]
            if pts:
                axes[1].loglog(*zip(*pts), st, label=f"d={d} {v}")
    axes[0].set(xlabel="candidates (restarts / raw samples)", ylabel="seconds per EI fwd+bwd",
                title=f"time, n={args.n} ({args.device})")
    axes[1].set(xlabel="candidates", ylabel="MB (peak growth of the call)",
                title="peak memory")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
