#!/usr/bin/env python3
r"""The PFN in Ax as a new user runs it, against Ax's own default, on the same seeds.

Ax 1.3 ``Client`` API, one CPU thread. For each scenario and seed, two strategies start
from the same Sobol points (the same ``Client(random_seed=...)``):

* ``pfn``: ``pfn_generation_strategy(num_sobol=N, seed=seed)`` (shipped network, default
  acquisition; Ax's dispatch: centre point, Sobol, then the PFN);
* ``ax``: Ax's default strategy with the same initialization
  (``configure_generation_strategy(initialization_budget=N,
  initialization_random_seed=seed)``: centre point, Sobol, then a fitted GP with Ax's
  acquisition choice).

Scenarios:

* ``hartmann3``: minimise Hartmann-3, 8 Sobol + 16 BO trials, one at a time;
* ``branin_constrained``: minimise Branin subject to ``x1 + x2 <= 15`` (a metric ``c``)
  with a tracked metric ``t`` reported too, 8 + 12 trials;
* ``branin_batch``: minimise Branin in batches of 4 (``get_next_trials(max_trials=4)``),
  8 Sobol + one trial (Ax's step from Sobol to BO yields one) + 4 batches; reports the smallest distance between points of a batch (unit cube);
* ``branin_currin``: minimise Branin and Currin together, 8 + 12 trials; reports the
  dominated hypervolume of the observed points (reference point (300, 14), the objectives'
  bounds on the domain, in the normalised units of BoTorch's ``BraninCurrin``).

Per scenario and strategy: seconds per BO generation (median and max over the BO
trials; a batch counts once), the final best value (or hypervolume), and the batch
spread. Output: ``benchmarks/results/ax_client.{json,md}``.

Run::

    .venv/bin/python benchmarks/ax_client.py --seeds 3            # about 15 min on 1 core
    .venv/bin/python benchmarks/ax_client.py --quick               # smoke test
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_args,
    machine_info,
    markdown_table,
    out_stem,
    set_threads,
    use_checkout,
    write_json,
)

BOUNDS = {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}
BRANIN_MIN = 0.397887


def branin(x1: float, x2: float) -> float:
    return ((x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)  # fmt: skip


def currin(x1: float, x2: float) -> float:
    u, v = (x1 + 5.0) / 15.0, x2 / 15.0
    v = max(v, 1e-9)
    return ((1 - math.exp(-1 / (2 * v)))
            * (2300 * u**3 + 1900 * u**2 + 2092 * u + 60)
            / (100 * u**3 + 500 * u**2 + 4 * u + 20))  # fmt: skip


def hartmann3(p: dict) -> float:
    import torch
    from botorch.test_functions import Hartmann

    x = torch.tensor([[p["x1"], p["x2"], p["x3"]]], dtype=torch.float64)
    return float(Hartmann(dim=3)(x))


SCENARIOS = {
    # name: (parameters, objective, constraints, sobol, BO generations, batch size)
    "hartmann3": ({f"x{i}": (0.0, 1.0) for i in (1, 2, 3)}, "-h", None, 8, 16, 1),
    "branin_constrained": (BOUNDS, "-branin", ["c <= 15.0"], 8, 12, 1),
    "branin_batch": (BOUNDS, "-branin", None, 8, 5, 4),
    "branin_currin": (BOUNDS, "-branin, -currin", None, 8, 12, 1),
}


def observe(scenario: str, p: dict) -> dict:
    if scenario == "hartmann3":
        return {"h": hartmann3(p)}
    b = branin(p["x1"], p["x2"])
    if scenario == "branin_constrained":
        return {"branin": b, "c": p["x1"] + p["x2"], "t": p["x1"] * p["x2"]}
    if scenario == "branin_currin":
        return {"branin": b, "currin": currin(p["x1"], p["x2"])}
    return {"branin": b}


def hypervolume(points: list[tuple[float, float]], ref=(300.0, 14.0)) -> float:
    r"""Area dominated (minimisation) by `points` inside the box below `ref`."""
    pts = sorted({(a, b) for a, b in points if a < ref[0] and b < ref[1]})
    area, best_b = 0.0, ref[1]
    for i, (a, b) in enumerate(pts):
        if b < best_b:
            nxt = ref[0]
            area += (nxt - a) * (best_b - b)
            best_b = b
    return area


def run_one(scenario: str, strategy: str, seed: int, quick: bool) -> dict:
    from ax import Client, RangeParameterConfig

    from botorch_community.ax import pfn_generation_strategy

    params, objective, constraints, n_sobol, n_bo, batch = SCENARIOS[scenario]
    if quick:
        n_sobol, n_bo = 5, min(n_bo, 2)
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name=k, parameter_type="float", bounds=b)
        for k, b in params.items()
    ])  # fmt: skip
    client.configure_optimization(objective=objective, outcome_constraints=constraints)
    if strategy == "pfn":
        opts = {"num_restarts": 4, "raw_samples": 64} if quick else None
        client.set_generation_strategy(
            pfn_generation_strategy(num_sobol=n_sobol, seed=seed, optimizer_options=opts)
        )
    else:
        client.configure_generation_strategy(
            initialization_budget=n_sobol, initialization_random_seed=seed
        )
    records, gen_times, spreads, n_trials = [], [], [], 0
    for _ in range(n_sobol):  # the centre and Sobol points, one at a time
        for idx, p in client.get_next_trials(max_trials=1).items():
            client.complete_trial(idx, raw_data=observe(scenario, p))
            records.append((p, observe(scenario, p)))
    for i in range(n_bo):
        t0 = time.perf_counter()
        # (Ax gives one trial at the step from Sobol to BO, whatever max_trials says)
        trials = client.get_next_trials(max_trials=batch if i > 0 else 1)
        gen_times.append(time.perf_counter() - t0)
        if len(trials) > 1:
            unit = [[(p[k] - params[k][0]) / (params[k][1] - params[k][0]) for k in params]
                    for p in trials.values()]  # fmt: skip
            d = [math.dist(a, b) for i, a in enumerate(unit) for b in unit[i + 1:]]
            spreads.append(min(d) if d else float("nan"))
        for idx, p in trials.items():
            y = observe(scenario, p)
            client.complete_trial(idx, raw_data=y)
            records.append((p, y))
            n_trials += 1
    if scenario == "branin_currin":
        # BoTorch's BraninCurrin scales: branin / 1, currin / 1 (already in those units)
        quality = hypervolume([(y["branin"], y["currin"]) for _, y in records])
    elif scenario == "branin_constrained":
        feas = [y["branin"] for p, y in records if y["c"] <= 15.0]
        quality = (min(feas) - BRANIN_MIN) if feas else float("nan")
    elif scenario == "hartmann3":
        quality = min(y["h"] for _, y in records) - (-3.86278)
    else:
        quality = min(y["branin"] for _, y in records) - BRANIN_MIN
    return dict(scenario=scenario, strategy=strategy, seed=seed, quality=quality,
                gen_times=gen_times, min_batch_spread=min(spreads) if spreads else None,
                bo_trials=n_trials)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "ax_client")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = p.parse_args()
    set_threads(args.threads or 1)
    use_checkout()
    warnings.filterwarnings("ignore")
    import ax  # noqa: F401 (Ax sets its loggers' levels on import: quiet them after)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ax"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from tqdm import tqdm

    # BoTorch JIT-compiles a fused C++ kernel for its hypervolume acquisitions (qLogEHVI,
    # qLogNEHVI) the first time one is built on a machine (about 25 s here; then cached under
    # ~/.cache/torch_extensions): a one-off cost of the machine, not of a strategy's generation,
    # that whichever strategy ran first would otherwise be charged with.
    from botorch.acquisition.multi_objective import logei as mo_logei

    getattr(mo_logei, "_try_load_fused_kernel", lambda: None)()
    seeds = 1 if args.quick else args.seeds
    jobs = [(sc, st, s) for sc in args.scenarios for s in range(seeds) for st in ("pfn", "ax")]
    runs = [run_one(sc, st, s, args.quick) for sc, st, s in tqdm(jobs, desc="ax_client")]
    stem = out_stem(args, "ax_client")
    write_json(stem.with_suffix(".json"), {"machine": machine_info(), "runs": runs})
    rows = []
    for sc in args.scenarios:
        row = [sc]
        for st in ("pfn", "ax"):
            rs = [r for r in runs if r["scenario"] == sc and r["strategy"] == st]
            times = [t for r in rs for t in r["gen_times"]]
            q = statistics.median(r["quality"] for r in rs)
            spread = [r["min_batch_spread"] for r in rs if r["min_batch_spread"] is not None]
            cell = (f"{'HV' if sc == 'branin_currin' else 'regret'} {q:.4g}; "
                    f"{statistics.median(times):.2f} s/gen (max {max(times):.2f})")  # fmt: skip
            if spread:
                cell += (f"; closest pair in a batch: median {statistics.median(spread):.3f} "
                         f"(min {min(spread):.3f})")  # fmt: skip
            row.append(cell)
        rows.append(row)
    text = (
        "### PFN in Ax vs Ax's default (same seeds, one CPU thread)\n\n"
        f"Medians over {seeds} seed(s); regret of the best (feasible) observation, or the "
        "hypervolume of the observed points (higher is better); seconds per BO "
        "generation (a batch of 4 counts once); closest pair in a batch: per run, the "
        "smallest distance between two points of one batch in the unit square, median "
        "(and min) over the seeds.\n\n"
        + markdown_table(["scenario", "pfn_generation_strategy", "Ax default"], rows)
        + "\n"
    )
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
