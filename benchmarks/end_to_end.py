#!/usr/bin/env python3
r"""End-to-end cost of one BO iteration's acquisition step.

Wall time of one full ``optimize_acqf`` (q = 1, num_restarts = 32, raw_samples = 1024,
BoTorch's default L-BFGS-B options) on `d = 6` data for n = 50, 100, 200:

* ``pfn_cached``: ``PFNModel`` + ``DiscretizedExpectedImprovement`` inside
  ``model.cache_training_context()`` (context encoded once for the whole optimisation);
* ``pfn_uncached``: the same model with ``cache_context=False`` (context re-encoded and
  expanded for every candidate of every call), capped by ``--uncached-timeout``;
* ``gp``: BoTorch ``SingleTaskGP`` (defaults) fitted with ``fit_gpytorch_mll``, then
  ``LogExpectedImprovement`` optimised with the same settings (fit and optimisation
  timed separately, the total is what a BO iteration pays).

Each (n, variant) runs in its own fresh subprocess after a small warm-up; all variants
in one run. The data are Sobol points of the negated Hartmann-6 function scaled to
the unit cube.

Usage::

    .venv/bin/python benchmarks/end_to_end.py                 # n = 50, 100, 200
    .venv/bin/python benchmarks/end_to_end.py --quick
    .venv/bin/python benchmarks/end_to_end.py --network random --device cuda
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

SCRIPT = Path(__file__).resolve()
RANDOM_NET = dict(emsize=256, nlayers=6, nhead=4, nhid=512, num_buckets=1000)


def get_network(kind: str, d: int, device: str):
    r"""(network, description). ``auto``: the shipped default if installed, else random."""
    C.use_checkout()
    from botorch_community.pfn.testing import random_pfn

    if kind in ("default", "auto"):
        try:
            from botorch_community.pfn import load_pretrained

            net = load_pretrained(device=device)
            if net.num_features < d:
                raise ValueError(f"default network has num_features={net.num_features} < {d}")
            return net, f"shipped default ({net.config})"
        except (FileNotFoundError, ImportError, ValueError) as e:
            if kind == "default":
                raise SystemExit(f"--network default: the shipped network is not available ({e})")
            desc = f"random (shipped default unavailable: {type(e).__name__})"
    else:
        desc = "random"
    net = random_pfn(num_features=max(d, 6), seed=0, **RANDOM_NET).to(device)
    return net, f"{desc} {RANDOM_NET}"


def worker(spec: dict) -> dict:
    C.use_checkout()
    import torch
    from botorch.acquisition.analytic import LogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf
    from botorch.test_functions import Hartmann
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from torch.quasirandom import SobolEngine

    from botorch_community.acquisition.discretized import DiscretizedExpectedImprovement
    from botorch_community.models.prior_fitted_network import PFNModel

    dev, n, d, v = spec["device"], spec["n"], spec["d"], spec["variant"]
    C.set_threads(spec.get("threads"))
    tkw = dict(dtype=torch.float64, device=dev)
    f = Hartmann(dim=6, negate=True).to(dev)  # its bounds live on the device too
    X = SobolEngine(d, scramble=True, seed=spec["seed"]).draw(n).to(**tkw)
    Y = f(X).unsqueeze(-1)
    bounds = torch.stack([torch.zeros(d, **tkw), torch.ones(d, **tkw)])
    opt = dict(bounds=bounds, q=1, num_restarts=spec["num_restarts"],
               raw_samples=spec["raw_samples"])
    out = dict(spec, loadavg_start=os.getloadavg())

    if v.startswith("pfn"):
        net, desc = get_network(spec["network"], d, dev)
        out["network_desc"] = desc
        # warm-up on a tiny problem
        ndt = {"auto": None, "float32": torch.float32, "float64": torch.float64}[
            spec.get("network_dtype", "auto")]
        wm = PFNModel(X[:5], Y[:5], model=net, cache_context=True, network_dtype=ndt)
        optimize_acqf(DiscretizedExpectedImprovement(wm, best_f=Y[:5].max()), bounds=bounds,
                      q=1, num_restarts=2, raw_samples=8, options={"maxiter": 3})
        model = PFNModel(X, Y, model=net, cache_context=False, network_dtype=ndt)
        out["network_dtype"] = str(model.network_dtype)
        acqf = DiscretizedExpectedImprovement(model, best_f=Y.max())
        calls = {"n": 0, "cands": 0}
        orig = acqf.forward

        def counting_forward(Xc):
            calls["n"] += 1
            calls["cands"] += Xc.shape[0]
            return orig(Xc)

        acqf.forward = counting_forward
        times = []
        for _ in range(spec["repeats"]):
            torch.manual_seed(spec["seed"])
            calls.update(n=0, cands=0)
            enc0 = model.num_encodings
            C.sync(dev)
            t0 = time.perf_counter()
            if v == "pfn_cached":
                with model.cache_training_context():
                    cand, val = optimize_acqf(acqf, **opt)
            else:
                cand, val = optimize_acqf(acqf, **opt)
            C.sync(dev)
            times.append(time.perf_counter() - t0)
            out["acqf_calls"], out["acqf_candidates"] = calls["n"], calls["cands"]
            out["encodings"] = model.num_encodings - enc0
        out["time_s"] = C.median(times)
        out["times_s"] = times
        out["acq_value"] = float(val)
    else:  # gp
        wm = SingleTaskGP(X[:5], Y[:5])
        fit_gpytorch_mll(ExactMarginalLogLikelihood(wm.likelihood, wm))
        fits, opts, tot = [], [], []
        for _ in range(spec["repeats"]):
            torch.manual_seed(spec["seed"])
            C.sync(dev)
            t0 = time.perf_counter()
            gp = SingleTaskGP(X, Y)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            C.sync(dev)
            t1 = time.perf_counter()
            cand, val = optimize_acqf(LogExpectedImprovement(gp, best_f=Y.max()), **opt)
            C.sync(dev)
            t2 = time.perf_counter()
            fits.append(t1 - t0)
            opts.append(t2 - t1)
            tot.append(t2 - t0)
        out.update(time_s=C.median(tot), times_s=tot, fit_s=C.median(fits),
                   optimize_s=C.median(opts), acq_value=float(val))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "end_to_end")
    p.add_argument("--network", default="auto", choices=["auto", "default", "random"])
    p.add_argument("--ns", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--num-restarts", type=int, default=32)
    p.add_argument("--raw-samples", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--uncached-timeout", type=float, default=240.0,
                   help="wall-clock cap (s) of one uncached optimize_acqf (its process)")
    p.add_argument("--skip-uncached", action="store_true")
    p.add_argument("--network-dtype", default="auto", choices=["auto", "float32", "float64"],
                   help="PFNModel(network_dtype=...); auto: float64 for this float64 data")
    args = p.parse_args()
    if args.worker:
        C.emit_result(worker(json.loads(args.worker)))
        return
    if args.quick:
        args.ns, args.raw_samples, args.num_restarts, args.repeats = [50], 128, 4, 1
        args.uncached_timeout = min(args.uncached_timeout, 120.0)
    from tqdm import tqdm

    stem = C.out_stem(args, "end_to_end")
    variants = ["pfn_cached", "gp"] + ([] if args.skip_uncached else ["pfn_uncached"])
    tasks = [(n, v) for n in args.ns for v in variants]
    results = []
    for n, v in tqdm(tasks, desc="end_to_end", unit="run"):
        spec = dict(variant=v, n=n, d=6, device=args.device, seed=0, network=args.network,
                    num_restarts=args.num_restarts, raw_samples=args.raw_samples,
                    repeats=1 if v == "pfn_uncached" else args.repeats,
                    threads=args.threads, network_dtype=args.network_dtype)
        timeout = args.uncached_timeout + 60 if v == "pfn_uncached" else 1800
        r = C.run_worker(SCRIPT, spec, timeout=timeout)
        if "error" in r and r["error"].startswith("timeout"):
            r["timed_out_after_s"] = args.uncached_timeout + 60
        elif "error" in r:
            tqdm.write(f"[n={n} {v}] {r['error'][-500:]}")
        results.append(dict(spec, **r))
        # keep what is measured so far (a run cut short still leaves its figures)
        C.write_json(stem.with_suffix(".partial.json"), dict(args=vars(args), results=results))
    payload = dict(benchmark="end_to_end", machine=C.machine_info(args.device),
                   args=vars(args), results=results)
    C.write_json(stem.with_suffix(".json"), payload)
    md = render(results, args)
    print(md)
    stem.with_suffix(".md").write_text(md + "\n")
    plot(results, stem.with_suffix(".png"), args)
    print(f"\nwrote {stem}.json, {stem}.md, {stem}.png")


def _get(results, n, v):
    return next((r for r in results if r["n"] == n and r["variant"] == v), None)


def render(results, args) -> str:
    rows = []
    for n in args.ns:
        c, u, g = _get(results, n, "pfn_cached"), _get(results, n, "pfn_uncached"), _get(results, n, "gp")

        def cell(r):
            if r is None:
                return "not run"
            if "timed_out_after_s" in r:
                return f"> {r['timed_out_after_s']:.0f} s (timed out)"
            if "error" in r:
                return "error"
            return C.fmt_s(r["time_s"])

        tc = c.get("time_s") if c else None
        tu = u.get("time_s") if u else None
        if tu and tc:
            sp = f"{tu / tc:.0f}x"
        elif u and "timed_out_after_s" in u and tc:
            sp = f"> {u['timed_out_after_s'] / tc:.0f}x"
        else:
            sp = "–"
        gp_parts = (f"{C.fmt_s(g['time_s'])} (fit {C.fmt_s(g['fit_s'])} + opt "
                    f"{C.fmt_s(g['optimize_s'])})") if g and "time_s" in g else cell(g)
        calls = f"{c.get('acqf_calls', '–')} / {c.get('acqf_candidates', '–')}" if c else "–"
        rows.append([n, cell(c), cell(u), sp, gp_parts, calls])
    net = next((r.get("network_desc") for r in results if r.get("network_desc")), "?")
    header = ["n", "PFN cached", "PFN uncached", "Speed-up", "SingleTaskGP + LogEI",
              "acqf calls / candidates evaluated (cached run)"]
    return (f"### One `optimize_acqf` (q=1, num_restarts={args.num_restarts}, raw_samples="
            f"{args.raw_samples}), d=6, device {args.device}\n\nPFN network: {net}\n\n"
            + C.markdown_table(header, rows)
            + "\n\nMedian of repeats (uncached: one run). Each (n, variant) in its own process.")


def plot(results, path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for v, st, label in (("pfn_cached", "-o", "PFN cached"), ("pfn_uncached", "-s", "PFN uncached"),
                         ("gp", "-^", "SingleTaskGP fit + LogEI")):
        pts = [(r["n"], r["time_s"]) for r in results if r["variant"] == v and r.get("time_s")]
        if pts:
            ax.semilogy(*zip(*pts), st, label=label)
        lb = [(r["n"], r["timed_out_after_s"]) for r in results
              if r["variant"] == v and r.get("timed_out_after_s")]
        if lb:
            ax.semilogy(*zip(*lb), "v", color="gray", label=f"{label}: timed out (lower bound)")
    ax.set(xlabel="n (training points)", ylabel="seconds per optimize_acqf",
           title=f"end-to-end acquisition step, d=6 ({args.device})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
