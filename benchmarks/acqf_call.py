#!/usr/bin/env python3
r"""One acquisition call (value + gradient) with the shipped network, against a GP's.

The cost of one L-BFGS-B step of ``optimize_acqf``: the cached
``DiscretizedLogExpectedImprovement`` of ``PFNModel(X, Y)`` (the default predictive) at
`m` candidates (`m x 1 x d`), forward and backward to the candidates, against BoTorch's
``LogExpectedImprovement`` on a fitted ``SingleTaskGP`` with the same data, in the same
process. Hartmann-6 data (Sobol points), float64, median of ``--repeats`` timed calls after
warm-up; the context is encoded once (the GP fitted once) before timing::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/acqf_call.py --threads 1
    PYTHONPATH=$PWD python benchmarks/acqf_call.py --device cuda

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/acqf_call[_cuda]``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--ns", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--candidates", type=int, nargs="+", default=[1, 32, 1024])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=None)
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on cuda, skip the CUDAGraphAcquisitionFunction column")
    args = p.parse_args()
    C.use_checkout()
    C.set_threads(args.threads)
    import torch
    from botorch.acquisition import LogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.test_functions import Hartmann
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from torch.quasirandom import SobolEngine
    from tqdm import tqdm

    from botorch_community.acquisition.cuda_graph import CUDAGraphAcquisitionFunction
    from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement
    from botorch_community.models.prior_fitted_network import PFNModel
    from botorch_community.pfn import default_network

    dev = torch.device(args.device)
    tkw = dict(dtype=torch.float64, device=dev)
    net = default_network(dev)
    f = Hartmann(dim=6, negate=True).to(**tkw)

    def timed_call(acqf, Xq) -> float:
        ts = []
        for i in range(args.repeats + 3):
            C.sync(args.device)
            t0 = time.perf_counter()
            x = Xq.clone().requires_grad_(True)
            acqf(x).sum().backward()
            C.sync(args.device)
            if i >= 3:
                ts.append(time.perf_counter() - t0)
        return C.median(ts)

    graphs = args.device == "cuda" and not args.no_cuda_graphs
    rows = []
    cells = [(n, m) for n in args.ns for m in args.candidates]
    for n, m in tqdm(cells, desc="acqf_call", unit="cell"):
        X = SobolEngine(6, scramble=True, seed=n).draw(n).to(**tkw)
        Y = f(X).unsqueeze(-1)
        Xq = torch.rand(m, 1, 6, generator=torch.Generator().manual_seed(m)).to(**tkw)
        pfn = PFNModel(X, Y, model=net)
        acq = DiscretizedLogExpectedImprovement(pfn, best_f=Y.max())
        gp = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        gp_acq = LogExpectedImprovement(gp, best_f=Y.max())
        with pfn.cache_training_context():
            with torch.no_grad():
                pfn.posterior(X[:1].unsqueeze(1))  # encode
            t_pfn = timed_call(acq, Xq)
            t_graph = timed_call(CUDAGraphAcquisitionFunction(acq), Xq) if graphs else None
            assert pfn.num_encodings <= 1
        t_gp = timed_call(gp_acq, Xq)
        rows.append(dict(n=n, candidates=m, pfn_s=t_pfn, pfn_graph_s=t_graph, gp_s=t_gp,
                         ratio=t_pfn / t_gp,
                         graph_ratio=None if t_graph is None else t_graph / t_gp))
        tqdm.write(f"n={n} m={m}: PFN {t_pfn * 1e3:.2f} ms, "
                   + ("" if t_graph is None else f"PFN graphs {t_graph * 1e3:.2f} ms, ")
                   + f"GP {t_gp * 1e3:.2f} ms")
    stem = Path(args.out or f"benchmarks/results/acqf_call{'_cuda' if args.device == 'cuda' else ''}")
    info = C.machine_info(args.device)
    C.write_json(stem.with_suffix(".json"), {"benchmark": "acqf_call", "args": vars(args),
                                             "machine": info, "rows": rows})
    dev_name = info.get("gpu", info.get("lscpu_Model name", "cpu")) if args.device == "cuda" \
        else info.get("lscpu_Model name", "cpu")
    lines = [
        "### One acquisition call (value + gradient): PFN (shipped network, default predictive, "
        "cached DiscretizedLogEI) vs SingleTaskGP + LogEI",
        "",
        f"Device {args.device} ({dev_name}), threads {args.threads}, float64, Hartmann-6 Sobol "
        f"data, median of {args.repeats} calls.",
        "",
        C.markdown_table(["n", "candidates", "PFN", "GP", "PFN / GP"],
                         [[r["n"], r["candidates"], C.fmt_s(r["pfn_s"]), C.fmt_s(r["gp_s"]),
                           f"{r['ratio']:.2f}x"] for r in rows])
        if not graphs else
        C.markdown_table(["n", "candidates", "PFN", "PFN, CUDA graphs", "GP", "PFN / GP",
                          "PFN graphs / GP"],
                         [[r["n"], r["candidates"], C.fmt_s(r["pfn_s"]),
                           C.fmt_s(r["pfn_graph_s"]), C.fmt_s(r["gp_s"]), f"{r['ratio']:.2f}x",
                           f"{r['graph_ratio']:.2f}x"] for r in rows]),
    ]
    if graphs:
        lines.append("")
        lines.append("PFN, CUDA graphs: the same acquisition function wrapped in "
                     "`CUDAGraphAcquisitionFunction` (the call captured once per batch "
                     "shape and replayed).")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
