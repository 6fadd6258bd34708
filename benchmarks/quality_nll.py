#!/usr/bin/env python3
r"""Predictive quality of a PFN surrogate on held-out datasets from its training prior.

For a grid of input dimensions `d` and context sizes `n`, ``--datasets`` datasets per
cell are drawn from the GP prior the checkpoint was trained on (the ``prior`` in its
metadata, else ``configs/default.json``; a seed the training streams never use). Each
dataset has `n` context rows and ``--test-points`` test rows. Every method predicts the
test targets from the context, in the user's (raw) units, and is scored by the mean
negative log-likelihood (NLL) per test point of the raw `y`:

* **oracle**: exact GP predictive with the true hyperparameters (unreachable: it knows
  them);
* **Bayes**: the Bayes-optimal predictive under the prior, i.e. the GP predictive
  averaged over the hyperparameters' posterior given the context, by self-normalised
  importance sampling over ``--samples`` prior draws of the hyperparameters (weights:
  log marginal likelihoods, float64 Cholesky), a mixture of Gaussians. Its effective
  sample size (ESS) is reported; where it is small, the estimate is worse than the true
  Bayes predictive (the mixture only knows the few draws that fit), so the PFN-Bayes gap
  is then *understated*;
* **PFN**: ``-PFNModel(train_X, train_Y, model=net).posterior(test_X, observation_noise=True).log_prob(y)``
  (the Riemann density in user units). ``log_prob`` is ``-inf`` for a target outside the
  outer bucket borders; such targets are counted (``pfn_outside``) and scored with the
  density of the nearest edge bucket (as the training loss does), so the mean stays
  finite;
* **SingleTaskGP**: BoTorch defaults (Standardize outcome transform, default priors),
  inputs in `[0, 1]^d`, one model per dataset fitted by ``fit_gpytorch_mll``, predictive
  with observation noise, back in raw units.

Calibration: coverage of the central 50% and 90% intervals (PFN via ``icdf``, the GP via
Gaussian quantiles). Datasets are split by their sampled noise variance into
*noise-free* (`< 1e-3`, the near-noise-free component of the prior) and *noisy*.

Outputs ``<out>.json``, ``<out>.md`` (the tables) and ``<out>.png`` (NLL vs n per d).

Usage::

    .venv/bin/python benchmarks/quality_nll.py [--quick] [--checkpoint PATH]
        [--datasets K] [--dims 1 2 4 6 10] [--ns 5 10 25 50 100 200] [--ensemble E]
        [--reuse-baselines benchmarks/results/quality_nll.json --out STEM]

``--reuse-baselines`` skips the baselines (about 95% of the run time) by reading them from
an earlier run on the same datasets; it checks that the seed, grid, sizes, number of
hyperparameter samples and the prior agree, and that the regenerated test targets match.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NOISE_FREE_BELOW = 1e-3  # noise variance threshold of the noise-free subset
LOW_ESS = 10.0  # flag SNIS estimates with a median ESS below this
Z50, Z90 = 0.6744897501960817, 1.6448536269514722


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint to evaluate (default: the shipped network)")
    p.add_argument("--network-set", default=[], nargs="+", metavar="FIELD=JSON",
                   help="inference settings of the network's config, e.g. "
                   "gp_constant_mean=true")
    p.add_argument("--datasets", type=int, default=16, help="datasets per (d, n) cell")
    p.add_argument("--test-points", type=int, default=50, help="test rows per dataset")
    p.add_argument("--samples", type=int, default=2000,
                   help="prior hyperparameter draws for the Bayes predictive")
    p.add_argument("--dims", type=int, nargs="+", default=[1, 2, 4, 6, 10])
    p.add_argument("--ns", type=int, nargs="+", default=[5, 10, 25, 50, 100, 200])
    p.add_argument("--seed", type=int, default=20240917)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest on a loaded 2-core machine)")
    p.add_argument("--no-stgp", action="store_true", help="skip the SingleTaskGP")
    p.add_argument("--known-noise", action="store_true",
                   help="every method is told each dataset's true noise variance: the PFN "
                        "via train_Yvar (networks with noise hints; others ignore it), "
                        "Bayes by SNIS over the other hyperparameters, SingleTaskGP with "
                        "fixed noise")
    p.add_argument("--ensemble", type=int, default=1,
                   help="PFNModel(ensemble_size=E): average over E input symmetries")
    p.add_argument("--no-warp", action="store_true",
                   help="PFNModel(warp_targets=False): standardise the targets only")
    p.add_argument("--predictive", default="mixture", choices=["mixture", "gp"],
                   help="PFNModel(predictive=...): the network's output or the GP head's alone")
    p.add_argument("--reuse-baselines", default=None, metavar="JSON",
                   help="take oracle, Bayes and SingleTaskGP figures from an earlier run's "
                        "JSON with the same datasets (seed, grid, sizes, samples, prior) "
                        "instead of recomputing them (the PFN is always evaluated)")
    p.add_argument("--prior", default=None, metavar="JSON",
                   help="draw the datasets from the 'prior' of this JSON (a training config "
                        "or an earlier run's results) instead of the checkpoint's training "
                        "prior; with --reuse-baselines the default is that run's prior, so "
                        "networks trained on different priors meet the same datasets")
    p.add_argument("--out", default=None,
                   help="output stem (default benchmarks/results/quality_nll[_quick])")
    args = p.parse_args()
    if args.quick:
        args.dims, args.ns = [d for d in args.dims if d in (1, 4)] or [1], [5, 25]
        args.datasets, args.test_points, args.samples = 4, 20, 200
    return args


# ------------------------------------------------------------------ Bayes (SNIS)
def _kernel(hp, Z1, Z2, matern: bool, same: bool):
    r"""Covariances of scaled inputs for a group of draws sharing the kernel family
    (same values as ``GPHyperparameters.covariance``, computing one family only)."""
    import torch

    sq = Z1.pow(2).sum(-1, keepdim=True) + Z2.pow(2).sum(-1).unsqueeze(-2)
    r2 = torch.baddbmm(sq, Z1, Z2.transpose(-1, -2), alpha=-2.0).clamp_min_(0.0)
    if same:
        r2.diagonal(dim1=-2, dim2=-1).zero_()
    if matern:  # (1 + sqrt5 r + 5/3 r^2) exp(-sqrt5 r), in place
        r = r2.sqrt()
        k = r2.mul_(5.0 / 3.0).add_(r, alpha=math.sqrt(5.0)).add_(1.0)
        k.mul_(r.mul_(-math.sqrt(5.0)).exp_())
    else:
        k = r2.mul_(-0.5).exp_()
    return k.mul_(hp.outputscale.view(-1, 1, 1))


def _chol(K, base_jitter, tries: int = 5):
    r"""Batched Cholesky with escalating jitter; returns `L` and a bool `ok` per draw."""
    import torch

    eye = torch.eye(K.shape[-1], dtype=K.dtype)
    jit = base_jitter.view(-1, 1, 1).clone()
    K.diagonal(dim1=-2, dim2=-1).add_(jit.view(-1, 1))  # in place (K is a scratch copy)
    L, info = torch.linalg.cholesky_ex(K)
    for _ in range(tries):
        bad = info != 0
        if not bool(bad.any()):
            break
        K[bad] = K[bad] + 99.0 * jit[bad] * eye  # total jitter x100
        jit[bad] = jit[bad] * 100.0
        L2, info2 = torch.linalg.cholesky_ex(K[bad])
        L[bad], info[bad] = L2, info2
    return L, info == 0


def _group_stats(hp, X, y, Xt, want_pred: bool):
    r"""Log marginal likelihoods (and predictive moments) of draws `hp` sharing one
    kernel family. X: `n x d`, y: `n`, Xt: `m x d` (float64)."""
    import torch

    S, n = hp.batch_size, X.shape[0]
    matern = bool(hp.is_matern[0])
    Z = hp._scaled(X.expand(S, *X.shape))
    K = _kernel(hp, Z, Z, matern, same=True)
    K.diagonal(dim1=-2, dim2=-1).add_(hp.noise_var.view(-1, 1))
    L, ok = _chol(K, hp.outputscale * hp.jitter)
    resid = (y.view(1, n, 1) - hp.mean(X.expand(S, *X.shape)))
    a = torch.linalg.solve_triangular(L, resid, upper=False)
    lml = (-0.5 * a.pow(2).sum((-1, -2)) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
           - 0.5 * n * math.log(2 * math.pi))
    lml = torch.where(ok & torch.isfinite(lml), lml, torch.full_like(lml, -math.inf))
    if not want_pred:
        return lml, None, None
    Zt = hp._scaled(Xt.expand(S, *Xt.shape))
    Ks = _kernel(hp, Z, Zt, matern, same=False)  # S x n x m
    A = torch.linalg.solve_triangular(L, Ks, upper=False)
    mu = hp.mean(Xt.expand(S, *Xt.shape)).squeeze(-1) + (A * a).sum(-2)  # S x m
    var = (hp.outputscale.view(-1, 1) - A.pow(2).sum(-2)).clamp_min(0.0)
    var = var + hp.noise_var.view(-1, 1)
    return lml, mu, var


def bayes_predictive(hp_groups, X, y, Xt, yt, chunk: int, keep_logw: float = -30.0):
    r"""SNIS estimate of the Bayes predictive log density of the test targets.

    Pass 1: log marginal likelihoods of all draws (in chunks). Pass 2: GP predictives of
    the draws whose normalised weight exceeds `exp(keep_logw)` (the rest carry less
    than `S * exp(keep_logw)` of the mass). Returns `(log p(yt) [m], ess)`.
    """
    import torch

    lmls = []
    for hp in hp_groups:
        parts = []
        for s in range(0, hp.batch_size, chunk):
            parts.append(_group_stats(hp.index(slice(s, s + chunk)), X, y, Xt, False)[0])
        lmls.append(torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64))
    all_lml = torch.cat(lmls)
    logw = all_lml - torch.logsumexp(all_lml, 0)
    w = logw.exp()
    ess = float(1.0 / (w * w).sum())
    comps_logw, comps_lp = [], []
    off = 0
    for hp, lml in zip(hp_groups, lmls):
        lw = logw[off:off + lml.numel()]
        off += lml.numel()
        idx = torch.nonzero(lw > keep_logw).squeeze(-1)
        for s in range(0, idx.numel(), chunk):
            sel = idx[s:s + chunk]
            _, mu, var = _group_stats(hp.index(sel), X, y, Xt, True)
            lp = -0.5 * (math.log(2 * math.pi) + var.log() + (yt.view(1, -1) - mu) ** 2 / var)
            comps_logw.append(lw[sel])
            comps_lp.append(lp)
    lw = torch.cat(comps_logw)
    lw = lw - torch.logsumexp(lw, 0)
    lp = torch.cat(comps_lp)  # S' x m
    return torch.logsumexp(lw.view(-1, 1) + lp, 0), ess


# ---------------------------------------------------------------------------- main
def gauss_nll(mu, var, y):
    return 0.5 * (math.log(2 * math.pi) + var.log() + (y - mu) ** 2 / var)


def grid_nll(mu, var, y, mean, std, borders):
    r"""NLL of `y` under the Gaussian `N(mu, var)` discretised on a bar distribution's
    buckets (the edges `mean + std * borders`, as the PFN standardises its context).

    What the oracle would score if it had to answer with the network's buckets: the
    floor the output grid alone puts under the PFN's NLL. Targets outside the outer
    borders count in the outer buckets, as the PFN's own figures do.

    Args:
        mu, var, y: `K x M` (float64).
        mean, std: `K x 1` context moments.
        borders: `num_buckets + 1` standardised bucket borders.

    Returns:
        `K x M` NLLs (nats, raw units of y).
    """
    import torch

    b = borders.to(mu)
    ys = ((y - mean) / std).clamp(float(b[0]), float(b[-1]))
    idx = (torch.bucketize(ys, b) - 1).clamp(0, len(b) - 2)
    lo, hi = b[idx] * std + mean, b[idx + 1] * std + mean  # raw bucket edges
    a, b2 = (lo - mu) / (var * 2).sqrt(), (hi - mu) / (var * 2).sqrt()
    # upper-tail form on the side of the mean the bucket lies on (no cancellation)
    upper = a + b2 > 0
    mass = torch.where(upper, 0.5 * (torch.erfc(a) - torch.erfc(b2)),
                       0.5 * (torch.erfc(-b2) - torch.erfc(-a)))
    return -(mass.clamp_min(1e-300) / (hi - lo)).log()


def load_baselines(args, prior: dict, cells) -> dict:
    r"""Per-cell records of an earlier run on the same datasets (``--reuse-baselines``)."""
    old = json.loads(Path(args.reuse_baselines).read_text())
    for key in ("seed", "datasets", "test_points", "samples", "known_noise"):
        if old["args"].get(key, False) != getattr(args, key):
            raise SystemExit(f"--reuse-baselines: {key} differs ({old['args'][key]} there, "
                             f"{getattr(args, key)} here).")
    from botorch_community.pfn.priors.gp import GPPriorConfig

    # through the config: options added since then take their (neutral) defaults
    then = GPPriorConfig.from_dict(old["prior"]).to_dict()
    if json.loads(json.dumps(then)) != json.loads(json.dumps(prior)):
        raise SystemExit("--reuse-baselines: the earlier run used a different prior.")
    by_cell = {(c["d"], c["n"]): c for c in old["cells"]}
    missing = [c for c in cells if c not in by_cell]
    if missing:
        raise SystemExit(f"--reuse-baselines: cells {missing} are not in {args.reuse_baselines}.")
    return by_cell


def mean_se(xs):
    import numpy as np

    xs = np.asarray(xs, dtype=float)
    if xs.size == 0:
        return float("nan"), float("nan")
    se = float(xs.std(ddof=1) / math.sqrt(xs.size)) if xs.size > 1 else float("nan")
    return float(xs.mean()), se


def main() -> None:
    args = parse_args()
    C.use_checkout()
    import numpy as np
    import torch
    from tqdm import tqdm

    torch.set_num_threads(max(1, min(2, args.threads)))
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from botorch_community.models.prior_fitted_network import PFNModel
    from botorch_community.pfn.bar_distribution import bar_nll
    from botorch_community.pfn.checkpoint import DEFAULT_WEIGHTS, load_pretrained
    from botorch_community.pfn.priors.gp import (
        GPPriorConfig, sample_gp_prior, sample_hyperparameters,
    )
    from botorch_community.pfn.standardize import context_moments

    net = load_pretrained(args.checkpoint)
    network_set = C.parse_network_set(args.network_set)
    if network_set:
        net.config = net.config.replace(**network_set)
    from botorch_community.pfn.checkpoint import read_checkpoint_config

    ckpt_sha = read_checkpoint_config(args.checkpoint).get("sha256")
    ckpt = str(args.checkpoint or DEFAULT_WEIGHTS)
    meta = getattr(net, "checkpoint_metadata", {}) or {}
    prior_json = args.prior or args.reuse_baselines
    if prior_json:
        prior_dict, prior_src = json.loads(Path(prior_json).read_text())["prior"], prior_json
    elif "prior" in meta:
        prior_dict, prior_src = meta["prior"], "checkpoint metadata"
    else:
        cfg_path = C.REPO_ROOT / "botorch_community/pfn/configs/default.json"
        prior_dict, prior_src = json.loads(cfg_path.read_text())["prior"], str(cfg_path)
    prior = GPPriorConfig.from_dict(prior_dict)
    dims = [d for d in args.dims if d <= min(net.num_features, prior.num_features)]
    skipped_dims = sorted(set(args.dims) - set(dims))
    if skipped_dims:
        print(f"[quality_nll] skipping d={skipped_dims}: above the network's "
              f"num_features={net.num_features}")
    stem = Path(args.out) if args.out else C.BENCH_DIR / "results" / (
        "quality_nll" + ("_quick" if args.quick else ""))
    stem.parent.mkdir(parents=True, exist_ok=True)

    K, M, S = args.datasets, args.test_points, args.samples
    cells = [(d, n) for d in dims for n in args.ns]
    reused = None
    if args.reuse_baselines:
        reused = load_baselines(args, prior.to_dict(), cells)
    results, units_check = [], None
    t_start = time.time()
    bar = tqdm(cells, desc="quality_nll", unit="cell")
    for ci, (d, n) in enumerate(bar):
        bar.set_postfix(d=d, n=n)
        timing = {}
        g = torch.Generator().manual_seed(args.seed * 7919 + 1000 * d + n)
        batch = sample_gp_prior(K, n + M, prior, dim=d, generator=g, dtype=torch.float64)
        X, Y = batch.X, batch.Y
        tX, tY, sX, sY = X[:, :n], Y[:, :n], X[:, n:], Y[:, n:]
        noise = batch.hypers.noise_var
        # (a) oracle
        mu, var = batch.oracle_predictive(n)
        oracle = gauss_nll(mu, var, sY).squeeze(-1)  # K x M
        c_mean, c_std = context_moments(tY)  # `K x 1 x 1`, the PFN's standardisation
        grid = grid_nll(mu.squeeze(-1), var.squeeze(-1), sY.squeeze(-1), c_mean.squeeze(-1),
                        c_std.squeeze(-1), net.borders.double())  # K x M
        t0 = time.time()
        if reused is not None:
            old = reused[(d, n)]["per_dataset"]
            if not np.allclose(old["oracle"], oracle.mean(-1).numpy(), rtol=1e-6, atol=1e-8):
                raise SystemExit(f"--reuse-baselines: the oracle NLLs of cell (d={d}, n={n})"
                                 " differ from the earlier run's: not the same datasets.")
            bayes = torch.tensor(old["bayes"], dtype=torch.float64).unsqueeze(-1)  # K x 1
            ess = list(old["ess"])
        else:
            # (b) Bayes by SNIS: the same S prior draws for every dataset of the cell
            hg = torch.Generator().manual_seed(args.seed * 7919 + 1000 * d + n + 1)
            hp = sample_hyperparameters(S, d, prior, hg)
            groups = [hp.index(hp.is_matern), hp.index(~hp.is_matern)]
            groups = [h for h in groups if h.batch_size > 0]
            chunk = max(50, int(4e6 // max(1, n * (n + M))))
            bayes, ess = torch.empty(K, M, dtype=torch.float64), []
            for i in range(K):
                g_i = groups
                if args.known_noise:  # the draws' noise replaced by the true one
                    g_i = [dataclasses.replace(h, noise_var=torch.full_like(h.noise_var, float(noise[i])))
                           for h in groups]
                lp, e = bayes_predictive(g_i, tX[i], tY[i, :, 0], sX[i], sY[i, :, 0], chunk)
                bayes[i] = -lp
                ess.append(e)
        timing["bayes_s"] = time.time() - t0
        # PFN
        t0 = time.time()
        pfn = torch.empty(K, M, dtype=torch.float64)
        outside = 0
        cov_pfn = {50: [], 90: []}
        with torch.no_grad():
            for i in range(K):
                Yvar = torch.full_like(tY[i], float(noise[i])) if args.known_noise else None
                model = PFNModel(tX[i], tY[i], model=net, ensemble_size=args.ensemble,
                                 train_Yvar=Yvar, warp_targets=not args.no_warp,
                                 predictive=args.predictive)
                post = model.posterior(sX[i], observation_noise=True)  # noisy test targets
                y = sY[i, :, 0].to(post.dtype)
                lp = post.log_prob(y)
                idx = post._bucket_index(y)
                clamped = (post.probabilities.gather(-1, idx.unsqueeze(-1)).squeeze(-1).log()
                           - post.bucket_widths[idx].log())
                inside = torch.isfinite(lp)
                if inside.any():
                    assert torch.allclose(lp[inside], clamped[inside], atol=1e-4, rtol=1e-5)
                outside += int((~inside).sum())
                pfn[i] = -clamped.double()
                for lev, (lo, hi) in ((50, (0.25, 0.75)), (90, (0.05, 0.95))):
                    q = post.icdf(torch.tensor([[lo], [hi]], dtype=post.dtype)).squeeze(-1)
                    cov_pfn[lev].append(((y >= q[0]) & (y <= q[1])).double().mean().item())
                if units_check is None and n >= 2 and model.ensemble_size == 1:
                    # -log_prob in user units == bar NLL of standardised y + log std
                    mean, std = context_moments(tY[i:i + 1].float())
                    hint = None
                    if Yvar is not None and net.noise_hint:
                        hint = (Yvar[None] / std.square()).float()
                    logits = net(tX[i:i + 1].float(), ((tY[i:i + 1] - mean) / std).float(),
                                 sX[i:i + 1].float(), train_Yvar=hint)
                    ref = bar_nll(logits.float(), ((sY[i:i + 1] - mean) / std).float(),
                                  net.borders)[0] + std.log().view(())
                    units_check = {
                        "d": d, "n": n, "max_abs_diff_nats": float(
                            (ref.double() + lp.double())[inside].abs().max()),
                        "context_std": float(std),
                    }
        timing["pfn_s"] = time.time() - t0
        # (c) SingleTaskGP, one fit per dataset
        t0 = time.time()
        stgp = torch.full((K, M), float("nan"), dtype=torch.float64)
        cov_gp = {50: [float("nan")] * K, 90: [float("nan")] * K}
        stgp_error = None
        if reused is not None:
            old = reused[(d, n)]["per_dataset"]
            stgp = torch.tensor(old["stgp"], dtype=torch.float64).unsqueeze(-1)  # K x 1
            cov_gp = {50: list(old["stgp_cov50"]), 90: list(old["stgp_cov90"])}
            stgp_error = reused[(d, n)].get("stgp_error")
        elif not args.no_stgp:
            try:
                gmu, gvar = torch.empty(K, M, dtype=torch.float64), torch.empty(K, M, dtype=torch.float64)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for i in range(K):
                        Yvar = torch.full_like(tY[i], float(noise[i])) if args.known_noise else None
                        gp = SingleTaskGP(tX[i], tY[i], train_Yvar=Yvar)
                        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
                        with torch.no_grad():
                            p = gp.posterior(sX[i], observation_noise=True)
                            gmu[i] = p.mean.squeeze(-1)
                            gvar[i] = p.variance.squeeze(-1).clamp_min(1e-300)
                stgp = gauss_nll(gmu, gvar, sY[..., 0])
                z = (sY[..., 0] - gmu).abs() / gvar.sqrt()
                cov_gp = {50: (z <= Z50).double().mean(-1).tolist(),
                          90: (z <= Z90).double().mean(-1).tolist()}
            except Exception as e:  # record, do not abort the run
                stgp_error = f"{type(e).__name__}: {e}"
        timing["stgp_s"] = time.time() - t0

        per_ds = {
            "oracle": oracle.mean(-1).tolist(), "oracle_grid": grid.mean(-1).tolist(),
            "bayes": bayes.mean(-1).tolist(),
            "pfn": pfn.mean(-1).tolist(), "stgp": stgp.mean(-1).tolist(),
            "ess": ess, "noise_var": noise.tolist(),
            "pfn_cov50": cov_pfn[50], "pfn_cov90": cov_pfn[90],
            "stgp_cov50": cov_gp[50], "stgp_cov90": cov_gp[90],
        }
        rec = {"d": d, "n": n, "datasets": K, "test_points": M, "pfn_outside": outside,
               "stgp_error": stgp_error, "timing_s": timing, "per_dataset": per_ds}
        for sub, mask in (("all", np.ones(K, bool)),
                          ("noise_free", noise.numpy() < NOISE_FREE_BELOW),
                          ("noisy", noise.numpy() >= NOISE_FREE_BELOW)):
            s = {"count": int(mask.sum())}
            for key in ("oracle", "bayes", "pfn", "stgp", "pfn_cov50", "pfn_cov90",
                        "stgp_cov50", "stgp_cov90"):
                s[key], s[key + "_se"] = mean_se(np.asarray(per_ds[key])[mask])
            pf, ba, st = (np.asarray(per_ds[k])[mask] for k in ("pfn", "bayes", "stgp"))
            s["pfn_minus_bayes"], s["pfn_minus_bayes_se"] = mean_se(pf - ba)
            s["pfn_minus_stgp"], s["pfn_minus_stgp_se"] = mean_se(pf - st)
            orc = np.asarray(per_ds["oracle"])[mask]
            s["pfn_minus_oracle"], s["pfn_minus_oracle_se"] = mean_se(pf - orc)
            grd = np.asarray(per_ds["oracle_grid"])[mask]
            s["grid_minus_oracle"], s["grid_minus_oracle_se"] = mean_se(grd - orc)
            e = np.asarray(ess)[mask]
            s["ess_median"] = float(np.median(e)) if e.size else float("nan")
            s["ess_min"] = float(e.min()) if e.size else float("nan")
            s["low_ess_share"] = float((e < LOW_ESS).mean()) if e.size else float("nan")
            rec[sub] = s
        results.append(rec)
        a = rec["all"]
        bar.write(f"d={d:2d} n={n:3d}: oracle {a['oracle']:.3f} bayes {a['bayes']:.3f} "
                  f"pfn {a['pfn']:.3f} stgp {a['stgp']:.3f} | ESS med {a['ess_median']:.0f} "
                  f"| {timing['bayes_s']:.0f}/{timing['pfn_s']:.0f}/{timing['stgp_s']:.0f} s")
    elapsed = time.time() - t_start

    summary = summarize(results)
    out = {
        "benchmark": "quality_nll", "checkpoint": ckpt, "checkpoint_sha256": ckpt_sha,
        "checkpoint_step": meta.get("step", (meta.get("training") or {}).get("steps")), "prior_source": prior_src, "prior": prior.to_dict(),
        "ensemble_size": args.ensemble, "noise_hint": bool(net.noise_hint),
        "num_buckets": len(net.borders) - 1,
        "args": vars(args), "skipped_dims": skipped_dims, "units_check": units_check,
        "noise_free_below": NOISE_FREE_BELOW, "low_ess": LOW_ESS,
        "elapsed_s": elapsed, "machine": C.machine_info("cpu"),
        "summary": summary, "cells": results,
    }
    md = markdown(out)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    stem.with_suffix(".md").write_text(md)
    plot(results, dims, stem.with_suffix(".png"), ckpt)
    print(md)
    print(f"[quality_nll] {elapsed:.0f} s; wrote {stem}.json/.md/.png")


def summarize(results):
    import numpy as np

    out = {}
    for sub in ("all", "noise_free", "noisy"):
        cells = [r[sub] for r in results if r[sub]["count"] > 0]
        gaps = np.array([c["pfn_minus_bayes"] for c in cells])
        vs = np.array([c["pfn_minus_stgp"] for c in cells])
        ok_ess = np.array([c["ess_median"] >= LOW_ESS for c in cells])
        out[sub] = {
            "cells": len(cells),
            "mean_gap_pfn_bayes": float(np.nanmean(gaps)) if len(cells) else None,
            "mean_gap_pfn_bayes_reliable_ess": (
                float(np.nanmean(gaps[ok_ess])) if ok_ess.any() else None),
            "max_gap_pfn_bayes": float(np.nanmax(gaps)) if len(cells) else None,
            "mean_gap_pfn_oracle": (float(np.nanmean([c["pfn_minus_oracle"] for c in cells]))
                                    if len(cells) else None),
            "mean_gap_grid_oracle": (float(np.nanmean([c["grid_minus_oracle"] for c in cells]))
                                     if len(cells) else None),
            "cells_pfn_better_than_stgp": int((vs < 0).sum()),
            "cells_pfn_not_better_than_stgp": [
                (r["d"], r["n"]) for r in results
                if r[sub]["count"] > 0 and not r[sub]["pfn_minus_stgp"] < 0],
        }
    return out


def _f(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _pm(x, se, nd=3):
    return f"{_f(x, nd)} ± {_f(se, nd)}" if not (isinstance(se, float) and math.isnan(se)) \
        else _f(x, nd)


def markdown(out) -> str:
    res, a = out["cells"], out["args"]
    L = [
        f"### PFN predictive quality on held-out prior datasets ({Path(out['checkpoint']).name}"
        f", step {out['checkpoint_step']}, sha256 {str(out.get('checkpoint_sha256'))[:12]}"
        + (f", ensemble of {out['ensemble_size']} input symmetries"
           if out.get("ensemble_size", 1) > 1 else "")
        + (", every method told the true noise variance"
           + ("" if out.get("noise_hint") else " (this network takes no noise hints: "
              "the PFN ignores it)") if out["args"].get("known_noise") else "") + ")", "",
        f"Mean NLL per test point of the raw y (nats; lower is better), {a['datasets']} "
        f"datasets x {a['test_points']} test points per cell; Bayes = SNIS over "
        f"{a['samples']} prior hyperparameter draws; ± = standard error over datasets "
        "(paired for differences). Cov50/Cov90: coverage of the central 50%/90% "
        f"intervals. The SNIS mixture is itself a predictive computed from the context "
        "alone, so in expectation true Bayes <= SNIS and oracle <= true Bayes: the true "
        "PFN-Bayes gap lies between PFN-Bayes(SNIS) and PFN-oracle. "
        f"`!` = median ESS below {out['low_ess']:.0f} (SNIS estimate loose: too "
        "pessimistic, so PFN-Bayes is understated). Out: test targets "
        "outside the PFN's outer borders (log_prob = -inf; scored with the edge bucket).",
        "",
        "| d | n | oracle | Bayes | PFN | SingleTaskGP | PFN-Bayes | PFN-oracle | PFN-STGP "
        "| ESS med | PFN cov50 | PFN cov90 | STGP cov50 | STGP cov90 | out |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        s = r["all"]
        flag = "!" if s["ess_median"] < out["low_ess"] else ""
        L.append(
            f"| {r['d']} | {r['n']} | {_f(s['oracle'])} | {_f(s['bayes'])}{flag} | "
            f"{_f(s['pfn'])} | {_f(s['stgp'])} | "
            f"{_pm(s['pfn_minus_bayes'], s['pfn_minus_bayes_se'])} | "
            f"{_f(s['pfn_minus_oracle'])} | "
            f"{_pm(s['pfn_minus_stgp'], s['pfn_minus_stgp_se'])} | {s['ess_median']:.0f} | "
            f"{_f(s['pfn_cov50'], 2)} | {_f(s['pfn_cov90'], 2)} | "
            f"{_f(s['stgp_cov50'], 2)} | {_f(s['stgp_cov90'], 2)} | {r['pfn_outside']} |")
    L += ["", f"Split by noise variance (noise-free: < {out['noise_free_below']:g}); "
          "PFN-Bayes and PFN-STGP per subset (count = datasets):", "",
          "| d | n | noise-free count | PFN-Bayes | PFN-STGP | noisy count | PFN-Bayes "
          "| PFN-STGP |", "|---|---|---|---|---|---|---|---|"]
    for r in res:
        row = [str(r["d"]), str(r["n"])]
        for sub in ("noise_free", "noisy"):
            s = r[sub]
            row += [str(s["count"]), _pm(s["pfn_minus_bayes"], s["pfn_minus_bayes_se"]),
                    _pm(s["pfn_minus_stgp"], s["pfn_minus_stgp_se"])]
        L.append("| " + " | ".join(row) + " |")
    sm = out["summary"]
    L += ["", "Summary:"]
    for sub in ("all", "noise_free", "noisy"):
        s = sm[sub]
        L.append(
            f"- {sub}: mean PFN-Bayes gap {_f(s['mean_gap_pfn_bayes'])} nats over "
            f"{s['cells']} cells ({_f(s['mean_gap_pfn_bayes_reliable_ess'])} over cells "
            f"with median ESS >= {out['low_ess']:.0f}; max {_f(s['max_gap_pfn_bayes'])}; "
            f"the true gap lies between this and PFN-oracle {_f(s['mean_gap_pfn_oracle'])}); "
            f"PFN better than SingleTaskGP in {s['cells_pfn_better_than_stgp']}/{s['cells']}"
            " cells" + (f"; not better in (d, n) = {s['cells_pfn_not_better_than_stgp']}"
                       if s["cells_pfn_not_better_than_stgp"] else ""))
    floor = {k: sm[k].get("mean_gap_grid_oracle") for k in ("all", "noise_free", "noisy")}
    if floor["all"] is not None:
        L.append(
            f"- output grid floor: the oracle discretised on the network's "
            f"{out.get('num_buckets', '?')} buckets is {_f(floor['all'])} nats above the "
            f"oracle (noise-free {_f(floor['noise_free'])}, noisy {_f(floor['noisy'])}); "
            "the rest of PFN-oracle is the network's inference, not the bar distribution's "
            "resolution")
    uc = out["units_check"]
    if uc:
        L.append(f"- units check (d={uc['d']}, n={uc['n']}): -log_prob(y) vs bar NLL of "
                 f"standardised y + log(context std): max |diff| {uc['max_abs_diff_nats']:.2e}"
                 " nats")
    L.append(f"- run time {out['elapsed_s']:.0f} s")
    L.append(f"- datasets drawn from the prior of: {out.get('prior_source', '?')}")
    if out["args"].get("reuse_baselines"):
        L.append(f"- oracle, Bayes and SingleTaskGP figures reused from "
                 f"`{Path(out['args']['reuse_baselines']).name}` (same datasets, checked)")
    return "\n".join(L) + "\n"


def plot(results, dims, path, ckpt) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims), 3.4), squeeze=False)
    styles = {"oracle": ("k", ":", "oracle (true hypers)"), "bayes": ("C2", "-", "Bayes (SNIS)"),
              "pfn": ("C0", "-", "PFN"), "stgp": ("C3", "--", "SingleTaskGP")}
    for ax, d in zip(axes[0], dims):
        rs = [r for r in results if r["d"] == d]
        ns = [r["n"] for r in rs]
        for key, (c, ls, label) in styles.items():
            ys = [r["all"][key] for r in rs]
            es = [r["all"][key + "_se"] for r in rs]
            ax.errorbar(ns, ys, yerr=es, color=c, ls=ls, marker="o", ms=3, capsize=2,
                        label=label)
        for r in rs:
            if r["all"]["ess_median"] < LOW_ESS:
                ax.annotate("!", (r["n"], r["all"]["bayes"]), color="C2", fontsize=9,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xticks(ns)
        ax.set_xticklabels([str(v) for v in ns])
        ax.minorticks_off()
        ax.set_title(f"d = {d}")
        ax.set_xlabel("context size n")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test NLL per point (nats, raw y)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Held-out prior datasets: {Path(ckpt).name} ('!': Bayes ESS < {LOW_ESS:.0f})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
