#!/usr/bin/env python3
r"""End-to-end cost of one BO iteration: model build + one ``optimize_acqf``, PFN vs GP.

Commands (defaults: n = 20 50 100 200 500 1000, d = 6 12, settings 10x512 32x1024,
PFN variants default and gp, median of 3 repeats after 1 warm-up: 24 cells x 4 iterations
x 3 methods)::

    # one CPU thread
    PYTHONPATH=$PWD .venv/bin/python benchmarks/end_to_end.py --threads 1 \
        --out benchmarks/results/end_to_end
    # all CPU threads
    PYTHONPATH=$PWD .venv/bin/python benchmarks/end_to_end.py --threads 0 \
        --out benchmarks/results/end_to_end_allthreads
    # CUDA (one GPU; on the device machine `python` is the one with torch and botorch)
    PYTHONPATH=$PWD python benchmarks/end_to_end.py --device cuda \
        --out benchmarks/results/end_to_end_cuda

Estimated runtimes (from one-repeat smoke cells of every size on the 2-core Xeon at load
average 3-4, i.e. about half a core to a core for this process; per cell a full run costs
4x one round of GP + PFN default + PFN gp; 2026-12-06, commit ac8b339):

* one CPU thread: about 14 min at that load (d = 6: 5 min, d = 12: 9 min); about 8-10 min
  on an idle core. n = 1000 is about 40% of it (GP fits of 10-14 s, PFN encodes of 2-3 s
  per iteration). On the device (10-minute cap per command) run it in two parts,
  ``--ds 6`` and ``--ds 12`` (add ``--deadline-s 540`` to each: cells that would not finish
  are reported as skipped instead of being lost; d = 12 may need a further split by
  ``--settings 10x512`` / ``32x1024``).
* all CPU threads: not measurable here (both cores busy). Expect 1.3-1.6x faster than one
  thread on 2 cores; on the device's 16 cores, 3-5 min (the GP fits and the raw-sample
  calls parallelise, the L-BFGS-B calls on 10-32 points hardly do): one command with
  ``--deadline-s 540``.
* CUDA: not measured with this script (no device machine could be started). The last
  measurement (H100, commit 5ac2c1f, same network) took 52-61 s per PFN ``optimize_acqf``
  at 32x1024, d = 6, n = 50-200, with 1374-1841 acquisition calls (GP + LogEI 0.7-4.5 s).
  If that persists, the full CUDA run is 1.5-3 hours: probe first with
  ``--device cuda --ds 6 --ns 200 --settings 32x1024 --warmup 0 --repeats 1`` (1-3 min),
  then plan from its per-iteration totals (a full run costs (warmup + repeats) x the sum
  of the three methods' totals over all cells), e.g. ``--repeats 1`` and one command per
  (d, setting), each with ``--deadline-s 540``.

Each BO iteration is timed in parts, with the same data and the same torch seed for every
method and repeat (so the raw samples are the same):

* **PFN** (``--variants``): ``default``: ``PFNModel(X, Y, predictive="mixture")`` (the
  network's full output; the default before ``"gp"`` became it) on the shared default network
  (``botorch_community.pfn.default_network(device)``, loaded once per process before any
  timing; passed as ``model=`` so that it also lives on CUDA) with the inputs in the unit
  cube, ``DiscretizedLogExpectedImprovement(model, best_f=Y.max())``, and ``optimize_acqf``
  inside ``model.cache_training_context()``; ``gp``: the same with
  ``PFNModel(X, Y, predictive="gp")`` (the default now: the GP head's mixture alone; test points skip the
  transformer layers). Parts: *build* (model + acquisition function), *encode* (the first
  posterior call inside ``cache_training_context()``, under ``no_grad`` as the raw-sample
  evaluation that would otherwise trigger it; it encodes the context, GP head fit
  included), *optimise* (``optimize_acqf``; the context is never re-encoded, checked).
* **GP**: ``SingleTaskGP(X, Y, outcome_transform=Standardize(1))`` fitted with
  ``fit_gpytorch_mll`` (*fit*: construction + fit), then BoTorch's analytic
  ``LogExpectedImprovement(gp, best_f=Y.max())`` and ``optimize_acqf`` (*optimise*).

``optimize_acqf(q=1, num_restarts, raw_samples)`` with BoTorch's default L-BFGS-B options
at each ``--settings`` entry (``RESTARTSxRAW``). Counted per iteration: forward calls of
the acquisition function (``calls``), how many of them carry gradients (``grad``: the
L-BFGS-B steps; the rest are raw samples and the final evaluation, under ``no_grad``), the
candidate points evaluated, and BoTorch's retries (``retries``: "Trying again with a new
set of initial conditions" warnings, raised when an L-BFGS-B restart ends with an
``OptimizationWarning``; ``lbfgs_failures``: the ``OptimizationWarning``\ s behind them;
``failed_twice``: "failed on the second try"). Other warnings are kept in the JSON (e.g.
the PFN's warning for n above the network's ``max_context`` of 200 training rows).

Objectives (negated, so maximised; Sobol training points in the unit cube, same ``--seed``
for every method): d = 6: Hartmann-6. d = 12: the sum of two Hartmann-6 on the two
disjoint halves of the inputs. Chosen over Ackley(12) / Levy(12) because it is the d = 6
objective's own family (same smooth, multimodal landscape, output scale x2) on the unit
cube without rescaling, so the d = 6 and d = 12 rows differ in dimension rather than in
the character of the objective (Ackley's kink and near-flat plateau, or Levy's
oscillations on [-10, 10]^d, would change how hard the surrogates' acquisition surfaces
are for L-BFGS-B, i.e. the very call counts measured here).

Repeats: for each (d, n, setting) every method runs ``--warmup`` untimed iterations, then
``--repeats`` timed ones, interleaved across methods (GP, PFN variants, GP, ...) so that a
change of machine load hits all methods alike; each part is the median over the repeats
(``total`` is the median of the per-iteration totals). All cells run in one process (as a
BO loop does); the load average is recorded per cell. Results are saved after every cell
(``<out>.partial.json``), then as ``<out>.json``, ``<out>.md`` and ``<out>.png`` (total time
per iteration against n, log-log, one panel per (d, setting), one line per method).

``--threads N``: torch intra-op threads (1: one CPU thread; 0: all of ``os.cpu_count()``;
omitted: torch's default). Split a long run with ``--ds``, ``--ns``, ``--settings`` and
``--variants`` (each part writes its own ``--out``).

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/end_to_end.py --quick   # seconds
    PYTHONPATH=$PWD .venv/bin/python benchmarks/end_to_end.py --threads 1 --ds 6 \
        --ns 20 50 100 --settings 10x512 --variants default --out /tmp/e2e_part
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULTS = dict(ns=[20, 50, 100, 200, 500, 1000], ds=[6, 12], settings=["10x512", "32x1024"],
                variants=["default", "gp"], repeats=3, warmup=1)
QUICK = dict(ns=[20, 50], ds=[6, 12], settings=["4x64"], variants=["default", "gp"],
             repeats=1, warmup=1)
#: Warm-started fits (one row added each) that build the `warm` variant's previous model.
WARM_CHAIN = 10
RETRY_MSG = "Trying again with a new set of initial conditions"
SECOND_FAIL_MSG = "failed on the second try"
METHOD_LABELS = {"gp": "SingleTaskGP + LogEI", "pfn_default": 'PFN (predictive="mixture")',
                 "pfn_gp": 'PFN (predictive="gp")',
                 "pfn_warm": 'PFN (predictive="gp", warm_start)',
                 "pfn_graphs": 'PFN (predictive="gp", warm_start, CUDA graphs)'}


def parse_setting(s: str) -> tuple[int, int]:
    try:
        r, m = s.lower().split("x")
        return int(r), int(m)
    except ValueError:
        raise argparse.ArgumentTypeError(f"setting must be RESTARTSxRAW (e.g. 10x512), got {s!r}")


def make_objective(d: int, device: str):
    r"""Negated Hartmann-6 (d = 6) or the sum of two on disjoint halves (d = 12)."""
    from botorch.test_functions import Hartmann

    h6 = Hartmann(dim=6, negate=True).to(device)
    if d == 6:
        return h6, "Hartmann-6 (negated)"
    if d == 12:
        return ((lambda X: h6(X[..., :6]) + h6(X[..., 6:])),
                "Hartmann-6(x[:6]) + Hartmann-6(x[6:]) (negated)")
    raise SystemExit(f"--ds: only 6 and 12 are defined, got {d}")


def count_warnings(ws) -> dict:
    r"""Retries, L-BFGS-B failures and other warnings among caught warnings `ws`."""
    from botorch.exceptions.warnings import OptimizationWarning

    retries = failed_twice = failures = 0
    other: Counter = Counter()
    for w in ws:
        msg = str(w.message)
        if RETRY_MSG in msg:
            retries += 1
            failures += msg.count("OptimizationWarning(")  # the restarts that failed
        elif SECOND_FAIL_MSG in msg:
            failed_twice += 1
        elif issubclass(w.category, OptimizationWarning):
            failures += 1  # (one that escaped optimize_acqf's own bookkeeping)
        else:
            other[f"{w.category.__name__}: {msg[:120]}"] += 1
    return dict(retries=retries, lbfgs_failures=failures, failed_twice=failed_twice,
                other_warnings=dict(other))


def counting(acqf, counts: dict) -> None:
    r"""Count `acqf`'s forward calls, those carrying gradients and the points evaluated."""
    import torch

    orig = acqf.forward

    def forward(X):
        counts["calls"] += 1
        counts["points"] += int(X.shape[0]) if X.dim() > 2 else 1
        if torch.is_grad_enabled() and X.requires_grad:
            counts["grad_calls"] += 1
        return orig(X)

    acqf.forward = forward


class Bench:
    def __init__(self, args, net, dev: str) -> None:
        import torch

        self.args, self.net, self.dev = args, net, dev
        self.tkw = dict(dtype=torch.float64, device=dev)
        self.ndt = {"auto": None, "float32": torch.float32, "float64": torch.float64}[
            args.network_dtype]

    def _sync(self) -> None:
        C.sync(self.dev)

    def iteration(self, method: str, X, Y, f, restarts: int, raw: int) -> dict:
        r"""One BO iteration of `method` on (X, Y); its part times, counts and proposal."""
        import torch
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.optim import optimize_acqf
        from gpytorch.mlls import ExactMarginalLogLikelihood

        from botorch_community.acquisition.cuda_graph import CUDAGraphAcquisitionFunction
        from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement
        from botorch_community.models.prior_fitted_network import PFNModel

        d = X.shape[-1]
        bounds = torch.stack([torch.zeros(d, **self.tkw), torch.ones(d, **self.tkw)])
        opt = dict(bounds=bounds, q=1, num_restarts=restarts, raw_samples=raw)
        counts = dict(calls=0, grad_calls=0, points=0)
        torch.manual_seed(self.args.seed)
        out: dict = {}
        if method == "gp":
            with warnings.catch_warnings(record=True) as ws_fit:
                warnings.simplefilter("always")
                self._sync()
                t0 = time.perf_counter()
                gp = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
                fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
                self._sync()
                t1 = time.perf_counter()
            with warnings.catch_warnings(record=True) as ws:
                warnings.simplefilter("always")
                acqf = LogExpectedImprovement(gp, best_f=Y.max())
                counting(acqf, counts)
                cand, val = optimize_acqf(acqf, **opt)
                self._sync()
                t2 = time.perf_counter()
            out.update(fit_s=t1 - t0, optimize_s=t2 - t1, total_s=t2 - t0,
                       fit_warnings=count_warnings(ws_fit))
        else:
            predictive = {"pfn_default": "mixture", "pfn_gp": "gp", "pfn_warm": "gp",
                          "pfn_graphs": "gp"}[method]
            warm = None
            if method in ("pfn_warm", "pfn_graphs"):
                # the previous iteration's model, as a BO loop has it (untimed): the end of
                # a chain of warm-started fits, one row added per iteration
                n = X.shape[-2]
                for _, warm, _ in C.warm_chain(X, Y, max(1, n - 1 - WARM_CHAIN), n,
                                               model=self.net, network_dtype=self.ndt,
                                               predictive=predictive):  # fmt: skip
                    pass  # keep the last
            with warnings.catch_warnings(record=True) as ws:
                warnings.simplefilter("always")
                self._sync()
                t0 = time.perf_counter()
                model = PFNModel(X, Y, model=self.net, network_dtype=self.ndt,
                                 predictive=predictive, warm_start=warm)
                acqf = DiscretizedLogExpectedImprovement(model, best_f=Y.max())
                if method == "pfn_graphs":
                    acqf = CUDAGraphAcquisitionFunction(acqf)
                counting(acqf, counts)
                self._sync()
                t1 = time.perf_counter()
                with model.cache_training_context():
                    with torch.no_grad():
                        model.posterior(X[:1])  # encodes the context
                    self._sync()
                    t2 = time.perf_counter()
                    enc = model.num_encodings
                    # 0 where a warm start reused its logits and skipped the network
                    network_pass = int(model.kv_cache.has_network_states)
                    cand, val = optimize_acqf(acqf, **opt)
                    self._sync()
                    t3 = time.perf_counter()
            out.update(build_s=t1 - t0, encode_s=t2 - t1, optimize_s=t3 - t2, total_s=t3 - t0,
                       encodings=enc, encodings_in_optimize=model.num_encodings - enc,
                       network_pass=network_pass)
        out.update(counts, **count_warnings(ws), acq_value=float(val),
                   candidate=cand.detach().cpu().view(-1).tolist(),
                   f_candidate=float(f(cand.detach()).view(-1)[0]))
        return out


def summarise(runs: list[dict]) -> dict:
    r"""Medians over the timed repeats (numbers), all repeats under ``runs``."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))
            and not isinstance(runs[0][k], bool) and k not in ("acq_value", "f_candidate")]
    med = {k: C.median([r[k] for r in runs]) for k in keys}
    return dict(med, acq_value=runs[-1]["acq_value"], f_candidate=runs[-1]["f_candidate"],
                runs=runs)


def run_cell(bench: Bench, d: int, n: int, setting: str, methods: list[str], pbar) -> dict:
    import torch
    from torch.quasirandom import SobolEngine

    args = bench.args
    restarts, raw = parse_setting(setting)
    f, _ = make_objective(d, bench.dev)
    X = SobolEngine(d, scramble=True, seed=args.seed).draw(n).to(**bench.tkw)
    Y = f(X).unsqueeze(-1)
    cell = dict(d=d, n=n, setting=setting, num_restarts=restarts, raw_samples=raw,
                y_max=float(Y.max()), loadavg_start=os.getloadavg(), methods={})
    timed: dict = {m: [] for m in methods}
    for it in range(args.warmup + args.repeats):
        for m in methods:
            what = "warm-up" if it < args.warmup else f"rep {it - args.warmup + 1}"
            pbar.set_postfix_str(f"d={d} n={n} {setting} {m} {what}")
            r = bench.iteration(m, X, Y, f, restarts, raw)
            if it >= args.warmup:
                timed[m].append(r)
            pbar.update(1)
    for m in methods:
        cell["methods"][m] = summarise(timed[m])
    cell["loadavg_end"] = os.getloadavg()
    return cell


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "end_to_end")
    p._option_string_actions["--threads"].help = (
        "torch intra-op threads: 1 = one CPU thread, 0 = all (os.cpu_count()); "
        "default: torch's default")
    p.add_argument("--ns", type=int, nargs="+", default=None,
                   help=f"training-set sizes (default {DEFAULTS['ns']}; --quick {QUICK['ns']})")
    p.add_argument("--ds", type=int, nargs="+", default=None, choices=[6, 12],
                   help="input dimensions (default 6 12)")
    p.add_argument("--settings", nargs="+", default=None,
                   help="optimize_acqf settings NUM_RESTARTSxRAW_SAMPLES (default 10x512 "
                        "32x1024; --quick 4x64)")
    p.add_argument("--variants", nargs="+", default=None, choices=["default", "gp", "warm", "graphs"],
                   help="PFN variants (default: default and gp; warm: gp with "
                   "warm_start= the model of the first n - 1 rows at the end of a chain of "
                   f"{WARM_CHAIN} warm-started fits, built untimed; graphs: "
                   "warm with the acquisition function in CUDAGraphAcquisitionFunction); "
                   "the GP baseline always runs")
    p.add_argument("--repeats", type=int, default=None, help="timed iterations (default 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations per (d, n, setting, method) first (default 1)")
    p.add_argument("--seed", type=int, default=0, help="Sobol data and torch seed")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no new (d, n, setting) cell once the elapsed time plus twice "
                        "the last cell's would exceed this; the report covers what ran "
                        "(e.g. 540 under the device's 10-minute cap)")
    p.add_argument("--network", default="default",
                   help="'default' (shipped) or a checkpoint path (load_network)")
    p.add_argument("--network-dtype", default="auto", choices=["auto", "float32", "float64"],
                   help="PFNModel(network_dtype=...); auto: float64 for this float64 data")
    args = p.parse_args()
    base = QUICK if args.quick else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for s in args.settings:
        parse_setting(s)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available")
    if args.threads == 0:
        C.set_threads(os.cpu_count())
    else:
        C.set_threads(args.threads)
    C.use_checkout()
    import torch
    from tqdm import tqdm

    from botorch_community.pfn import load_network

    stem = C.out_stem(args, "end_to_end")
    t0 = time.perf_counter()
    net = load_network(args.network, device=args.device)
    load_s = time.perf_counter() - t0
    bench = Bench(args, net, args.device)
    methods = ["gp"] + [f"pfn_{v}" for v in args.variants]
    cells = [(d, n, s) for d in args.ds for n in args.ns for s in args.settings]
    header = dict(benchmark="end_to_end", machine=C.machine_info(args.device),
                  threads=torch.get_num_threads(), args=vars(args),
                  network=dict(name=args.network, config=net.config.to_dict(), load_s=load_s),
                  objectives={d: make_objective(d, args.device)[1] for d in args.ds})
    results = []
    pbar = tqdm(total=len(cells) * (args.warmup + args.repeats) * len(methods),
                desc="end_to_end", unit="iter")
    start, last_cell_s = time.perf_counter(), 0.0
    for d, n, s in cells:
        elapsed = time.perf_counter() - start
        if args.deadline_s and elapsed + 2 * last_cell_s > args.deadline_s:
            results.append(dict(d=d, n=n, setting=s, skipped="deadline"))
            continue
        t_cell = time.perf_counter()
        try:
            cell = run_cell(bench, d, n, s, methods, pbar)
        except Exception:  # keep going: record the error in the cell
            err = traceback.format_exc()
            tqdm.write(f"[d={d} n={n} {s}] {err[-800:]}")
            cell = dict(d=d, n=n, setting=s, error=err[-4000:])
        last_cell_s = time.perf_counter() - t_cell
        cell["wall_s"] = last_cell_s
        results.append(cell)
        C.write_json(stem.with_suffix(".partial.json"), dict(header, results=results))
    pbar.close()
    C.write_json(stem.with_suffix(".json"), dict(header, results=results))
    md = render(results, args, header)
    print(md)
    stem.with_suffix(".md").write_text(md + "\n")
    plot(results, stem.with_suffix(".png"), args)
    partial = stem.with_suffix(".partial.json")
    if partial.exists():
        partial.unlink()
    print(f"\nwrote {stem}.json, {stem}.md, {stem}.png")


def _calls(r: dict) -> str:
    s = f"{r['calls']:.0f} ({r['grad_calls']:.0f} grad)"
    if r.get("retries"):
        s += f", {r['retries']:g} retr."
    if r.get("failed_twice"):
        s += ", failed twice"
    return s


def render(results: list[dict], args, header: dict) -> str:
    rows = []
    for c in results:
        if "methods" not in c:
            what = "error" if "error" in c else "skipped (--deadline-s)"
            rows.append([c["n"], c["d"], c["setting"], what, *["–"] * 10])
            continue
        g = c["methods"]["gp"]
        for v in args.variants:
            pf = c["methods"][f"pfn_{v}"]
            rows.append([c["n"], c["d"], c["setting"], v, C.fmt_s(pf["build_s"]),
                         C.fmt_s(pf["encode_s"]) + ("" if pf.get("network_pass", 1) else " *"),
                         C.fmt_s(pf["optimize_s"]),
                         C.fmt_s(pf["total_s"]), _calls(pf), C.fmt_s(g["fit_s"]),
                         C.fmt_s(g["optimize_s"]), C.fmt_s(g["total_s"]), _calls(g),
                         f"{pf['total_s'] / g['total_s']:.1f}x"])
    cols = ["n", "d", "setting", "PFN variant", "PFN build", "PFN encode", "PFN optimise",
            "PFN total", "PFN calls", "GP fit", "GP optimise", "GP total", "GP calls",
            "PFN / GP"]
    m = header["machine"]
    dev = m.get("gpu", m.get("lscpu_Model name", "cpu")) if args.device == "cuda" else \
        m.get("lscpu_Model name", "cpu")
    loads = [x for c in results if "loadavg_start" in c
             for x in (c["loadavg_start"][0], c["loadavg_end"][0])]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"
    return (
        f"### One BO iteration (model build + `optimize_acqf`, q = 1): PFN vs `SingleTaskGP` "
        f"+ LogEI\n\nDevice {args.device} ({dev}), {header['threads']} torch thread(s), "
        f"1-min load average {load}; torch {m.get('torch')}, botorch {m.get('botorch')}, "
        f"commit {m.get('git_commit')}. Setting = num_restarts x raw_samples. Median of "
        f"{args.repeats} timed iterations after {args.warmup} warm-up(s), methods "
        f"interleaved, same data and seed. Objectives: "
        + "; ".join(f"d = {d}: {o}" for d, o in header["objectives"].items()) + ".\n\n"
        + C.markdown_table(cols, rows)
        + "\n\nPFN: build = `PFNModel` + `DiscretizedLogExpectedImprovement`; encode = first "
        "posterior call in `cache_training_context()`; optimise = `optimize_acqf` in that "
        "block. variant `gp` = `PFNModel(..., predictive=\"gp\")`; `warm` = the same with "
        "`warm_start=` the previous iteration's model: the model of the first n - 1 rows at the end "
        f"of a chain of {WARM_CHAIN} warm-started fits that add one row each (built and encoded "
        "untimed), as in a BO loop; * = the encode reused the chain's particle logits and "
        "skipped the network pass (`gp_reuse_logits_growth`: the network runs once per 10% "
        "growth of the context). GP: fit = "
        "`SingleTaskGP(X, Y, outcome_transform=Standardize(1))` + `fit_gpytorch_mll`; "
        "optimise = `LogExpectedImprovement` + `optimize_acqf`. Calls: forward calls of the "
        "acquisition function (those with gradients: L-BFGS-B steps); retr. = BoTorch "
        "retries from new initial conditions after an L-BFGS-B failure. n > 200 exceeds "
        "the network's training contexts (`max_context`).")


def plot(results: list[dict], path: Path, args) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds, ss = list(args.ds), list(args.settings)
    fig, axes = plt.subplots(len(ds), len(ss), figsize=(5.2 * len(ss), 3.9 * len(ds)),
                             squeeze=False, sharex=True)
    styles = {"gp": ("k", "^"), "pfn_default": ("C0", "o"), "pfn_gp": ("C1", "s"),
              "pfn_warm": ("C2", "D"), "pfn_graphs": ("C3", "v")}
    methods = ["gp"] + [f"pfn_{v}" for v in args.variants]
    for i, d in enumerate(ds):
        for j, s in enumerate(ss):
            ax = axes[i][j]
            cells = sorted((c for c in results if c["d"] == d and c["setting"] == s
                            and "methods" in c), key=lambda c: c["n"])
            for m in methods:
                pts = [(c["n"], c["methods"][m]["total_s"]) for c in cells
                       if m in c["methods"] and math.isfinite(c["methods"][m]["total_s"])]
                if pts:
                    col, mk = styles[m]
                    ax.loglog(*zip(*pts), color=col, marker=mk, label=METHOD_LABELS[m])
            r, raw = parse_setting(s)
            ax.set_title(f"d = {d}, {r} restarts, {raw} raw samples", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(ds) - 1:
                ax.set_xlabel("n (training points)")
            if j == 0:
                ax.set_ylabel("seconds per BO iteration")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"model build + optimize_acqf ({args.device})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
