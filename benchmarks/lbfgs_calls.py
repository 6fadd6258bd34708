#!/usr/bin/env python3
r"""Why ``optimize_acqf`` calls the PFN's acquisition more often than the GP's, on one cell.

``end_to_end.py`` counts the acquisition calls of one ``optimize_acqf``. BoTorch's batched
L-BFGS-B calls until its *last* restart stops, so a count says little by itself. This
script rebuilds one of its cells (same data: ``--seed``'s Sobol points on the same
objective; the PFN warm-started at the end of the same chain of fits; ``SingleTaskGP`` +
``LogExpectedImprovement`` fitted to the same data) and, for each surrogate:

* runs each restart's L-BFGS-B alone (SciPy's ``fmin_l_bfgs_b`` from the initial
  conditions ``optimize_acqf`` would draw, BoTorch's default options): iterations,
  function evaluations, the stopping reason and the final value per restart, and the
  trace of the slowest restart (distance to its final value every iteration);
* checks the surface's smoothness: along a random line through the best candidate
  (within the cube's faces it lies on),
  the largest second difference at steps of 1e-6 (noise in the value, e.g. from
  quadrature, would show here; L-BFGS-B stops once a step gains less than about 2e-9);
* reports the hyperparameters: the GP's fitted lengthscales, and the PFN's particles
  (lengthscales, weights and log marginal likelihoods on the warped targets).

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/lbfgs_calls.py --threads 1 --d 6 --n 50 \
        --setting 32x1024 --out /tmp/lbfgs_calls        # about 10 s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from end_to_end import WARM_CHAIN, counting, make_objective, parse_setting  # noqa: E402

#: Steps of the smoothness scan along a line (unit-cube units).
SCAN_STEP = 1e-6


def per_restart_lbfgsb(acqf, ics, d: int) -> list[dict]:
    r"""Each restart (``ics``: ``R x 1 x d``) through SciPy's L-BFGS-B alone on
    ``[0, 1]^d``; per restart its iterations, evaluations, stopping reason, final value
    and the values at each iteration."""
    import numpy as np
    import torch
    from scipy.optimize import fmin_l_bfgs_b

    def value_and_grad(x):
        xt = torch.tensor(x, dtype=torch.float64).view(1, 1, d).requires_grad_(True)
        y = -acqf(xt).sum()
        (g,) = torch.autograd.grad(y, xt)
        return float(y.detach()), g.view(-1).numpy().astype(np.float64)

    out = []
    for x0 in ics.view(-1, d):
        trace: list[float] = []
        _, f, info = fmin_l_bfgs_b(value_and_grad, x0.numpy(), bounds=[(0.0, 1.0)] * d,
                                   callback=lambda xk: trace.append(value_and_grad(xk)[0]))
        out.append(dict(iterations=int(info["nit"]), evaluations=int(info["funcalls"]),
                        stop=str(info["task"]), value=-float(f), trace=[-t for t in trace]))
    return out


def smoothness(acqf, x, d: int, seed: int) -> dict:
    r"""Second differences of ``acqf`` along a random unit line through ``x`` (``1 x d``)
    within the faces of the cube that ``x`` lies on, 41 points at steps of
    :data:`SCAN_STEP`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    # along the faces the candidate lies on (clamping there would add kinks)
    v = torch.where((x.view(-1) < 1e-4) | (x.view(-1) > 1 - 1e-4), 0.0, v)
    v = v / v.norm()
    t = SCAN_STEP * torch.arange(-20, 21, dtype=torch.float64)
    with torch.no_grad():
        vals = acqf((x + t[:, None] * v).clamp(0.0, 1.0).unsqueeze(1))
    d2 = (vals[2:] - 2 * vals[1:-1] + vals[:-2]).abs()
    return dict(step=SCAN_STEP, max_second_difference=float(d2.max()),
                median_second_difference=float(d2.median()), value=float(vals[20]))


def run(args) -> dict:
    import torch
    from botorch.acquisition.analytic import LogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from botorch.optim.initializers import gen_batch_initial_conditions
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from torch.quasirandom import SobolEngine

    from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement
    from botorch_community.models.prior_fitted_network import PFNModel
    from botorch_community.pfn.networks import load_network

    d, n = args.d, args.n
    restarts, raw = parse_setting(args.setting)
    f, objective = make_objective(d, "cpu")
    X = SobolEngine(d, scramble=True, seed=args.seed).draw(n).to(torch.float64)
    Y = f(X).unsqueeze(-1)
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(torch.float64)
    opt = dict(bounds=bounds, q=1, num_restarts=restarts, raw_samples=raw)
    out = dict(d=d, n=n, setting=args.setting, seed=args.seed, objective=objective,
               methods={})

    gp = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    net = load_network(args.network)
    warm = None
    for _, warm, _ in C.warm_chain(X, Y, max(1, n - 1 - WARM_CHAIN), n, model=net):
        pass
    model = PFNModel(X, Y, model=net, warm_start=warm)
    with _spy_conditioning() as seen, model.cache_training_context(), torch.no_grad():
        model.posterior(X[:1])  # (encoded again below: the cache lives in the block)
    surrogates = {
        "gp": (LogExpectedImprovement(gp, best_f=Y.max()), None),
        "pfn_warm": (DiscretizedLogExpectedImprovement(model, best_f=Y.max()), model),
    }
    for name, (acqf, pfn) in surrogates.items():
        ctx = pfn.cache_training_context() if pfn is not None else contextlib.nullcontext()
        with ctx:
            counts = dict(calls=0, grad_calls=0, points=0)
            counting(acqf, counts)
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            cand, _ = optimize_acqf(acqf, **opt)
            seconds = time.perf_counter() - t0
            calls = counts["calls"]  # (the calls below are not optimize_acqf's)
            torch.manual_seed(args.seed)
            ics = gen_batch_initial_conditions(acqf, bounds, q=1, num_restarts=restarts,
                                               raw_samples=raw)
            rs = per_restart_lbfgsb(acqf, ics, d)
            best = max(rs, key=lambda r: r["value"])
            slowest = max(rs, key=lambda r: r["evaluations"])
            m = dict(optimize_acqf_calls=calls, optimize_acqf_s=seconds,
                     restarts=[{k: v for k, v in r.items() if k != "trace"} for r in rs],
                     slowest_trace_gap=[t - slowest["value"] for t in slowest["trace"]],
                     smoothness=smoothness(acqf, cand.view(1, d), d, args.seed),
                     best_value=best["value"])
            if pfn is None:
                m["lengthscales"] = gp.covar_module.lengthscale.detach().view(-1).tolist()
            else:
                m.update(_particles(pfn, seen))
        out["methods"][name] = m
    return out


@contextlib.contextmanager
def _spy_conditioning():
    r"""Record the context (inputs, targets, options) of the GP head's conditionings."""
    from botorch_community.pfn.gp_head import GPHead

    seen: dict = {}
    condition = GPHead._condition

    def spy(self, theta, X, y, observed, *a, **k):
        seen.update(head=self, X=X, y=y, observed=observed, a=a, k=k)
        return condition(self, theta, X, y, observed, *a, **k)

    GPHead._condition = spy
    try:
        yield seen
    finally:
        GPHead._condition = condition


def _particles(model, seen: dict) -> dict:
    r"""The PFN's GP particles in its cache: lengthscales (``J x d``), weights, and log
    marginal likelihoods on the context's (warped, standardised) targets as the head saw
    them (``seen``, from :func:`_spy_conditioning`)."""
    from botorch_community.pfn.gp_head import GPHead

    fit = model._kv_cache.gp_fit
    ls = (1.0 / fit.inv_lengthscale).reshape(-1, fit.inv_lengthscale.shape[-1])
    _, lml = GPHead._condition(seen["head"], fit.theta, seen["X"], seen["y"],
                               seen["observed"], *seen["a"], **dict(seen["k"], with_grad=False))
    return dict(particle_lengthscales=ls.tolist(),
                particle_weights=fit.log_weights.exp().view(-1).tolist(),
                particle_noise=fit.noise.view(-1).tolist(),
                particle_outputscale=fit.outputscale.view(-1).tolist(),
                particle_log_marginal_likelihood=lml.view(-1).tolist())


def render(r: dict) -> str:
    lines = [f"### L-BFGS-B per restart: d = {r['d']}, n = {r['n']}, {r['setting']} "
             f"({r['objective']}, seed {r['seed']})", ""]
    rows = []
    for name, m in r["methods"].items():
        its = sorted(x["iterations"] for x in m["restarts"])
        evs = sorted(x["evaluations"] for x in m["restarts"])
        moved = [x for x in m["restarts"] if x["iterations"] > 5]
        sm = m["smoothness"]
        rows.append([name, m["optimize_acqf_calls"], f"{m['optimize_acqf_s']:.2f} s",
                     f"{its[len(its) // 2]} / {its[-1]}", f"{evs[len(evs) // 2]} / {evs[-1]}",
                     f"{len(moved)} / {len(its)}",
                     f"{sm['max_second_difference']:.1e} ({sm['median_second_difference']:.1e})"])
    lines.append(C.markdown_table(
        ["surrogate", "optimize_acqf calls", "time", "iterations median / max",
         "evaluations median / max", "restarts > 5 iterations",
         "max |2nd difference| at 1e-6 steps (median)"], rows))
    for name, m in r["methods"].items():
        gap = m["slowest_trace_gap"]
        lines += ["", f"**{name}**, slowest restart: value below its final one, every "
                  f"iteration: " + " ".join(f"{g:.0e}" for g in gap)]
        if "lengthscales" in m:
            lines.append("lengthscales: " + ", ".join(f"{v:.3g}" for v in m["lengthscales"]))
        else:
            for ls, w, lml in zip(m["particle_lengthscales"], m["particle_weights"],
                                  m["particle_log_marginal_likelihood"]):
                lines.append(f"- particle: weight {w:.3f}, log marginal likelihood "
                             f"{lml:.2f}, lengthscales " + ", ".join(f"{v:.3g}" for v in ls))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=6, choices=[6, 12])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--setting", default="32x1024", help="RESTARTSxRAW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network", default="default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(C.BENCH_DIR / "results" / "lbfgs_calls"))
    args = p.parse_args()
    C.use_checkout()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads or torch.get_num_threads())
    r = run(args)
    md = render(r)
    Path(args.out).with_suffix(".json").write_text(json.dumps(r, indent=1))
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
