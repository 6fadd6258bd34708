#!/usr/bin/env python3
r"""CPU prototype: a GP output head with hyperparameters amortised by the network.

The Bayes predictive a PFN approximates is, under a GP prior, a mixture of GP predictives
over the hyperparameter posterior:

.. math::
    p(y \mid x, D) = \textstyle\int p(y \mid x, D, \theta)\, p(\theta \mid D)\, d\theta
        \approx \sum_j \pi_j\, \mathcal N(y;\ \mu_j(x), v_j(x)).

``benchmarks/quality_nll.py`` shows the shipped network's gap to the oracle is its
inference, not its output grid (the oracle on the bar grid is 0.008 nats above the oracle),
and the gap is largest for noise-free data at large `n`, where a GP predictive is sharp
and exact at the observations. This head lets the network propose `J` hyperparameter
particles `theta_j` (ARD lengthscales, outputscale, noise; Matérn-5/2 for even `j`, RBF
for odd `j`) from the final state of the learned context token, weights them by a learned
logit plus their log marginal likelihood (so the weights follow the posterior when the
proposals are good), and mixes the discretised GP mixture into the bar distribution with a
weight from each test token. The GP algebra runs in float64 (Cholesky of `n x n`).

A network with the head trains from scratch on the same batches as the plain network of
``tools/proto_readout.py`` (same config, seed and schedule), and the script prints the same
evaluation (gap to the oracle per `n`, noise-free and noisy apart; error at the
observations), so the figures compare with ``benchmarks/results/proto_readout_plain.json``
at the same steps.

Usage::

    PYTHONPATH=$PWD python tools/proto_gphead.py --steps 3000 --out /tmp/proto_gp
    PYTHONPATH=$PWD python tools/proto_gphead.py --steps 20 --small   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proto_readout import eval_sets, evaluate, make_config, train_steps  # noqa: E402

from botorch_community.pfn.train import PriorSampler, fit_borders  # noqa: E402
from botorch_community.pfn.transformer import (  # noqa: E402
    PFNTransformer,
    _log_gaussian_bucket_probs,
)


def gp_kernel(r2: torch.Tensor, matern: torch.Tensor) -> torch.Tensor:
    r"""Unit-variance Matérn-5/2 (where `matern`) or RBF kernel of scaled squared
    distances `r2` (gradients finite at `r2 = 0`)."""
    r = r2.clamp_min(1e-30).sqrt() * math.sqrt(5.0)
    mat = (1.0 + r + r.square() / 3.0) * torch.exp(-r)
    return torch.where(matern, mat, torch.exp(-0.5 * r2))


class GPHeadPFN(PFNTransformer):
    r"""A :class:`PFNTransformer` (reference path only) with the GP mixture head."""

    def __init__(self, *args, particles: int = 4, init_logit: float = -2.0, **kw):
        super().__init__(*args, **kw)
        F_, e, J = self.num_features, kw["emsize"], particles
        self.particles = J
        self.gp_norm = nn.LayerNorm(e)
        # per particle: F log lengthscales, log outputscale, log noise, weight logit
        self.gp_hyper = nn.Linear(e, J * (F_ + 3))
        nn.init.zeros_(self.gp_hyper.weight)
        with torch.no_grad():
            b = self.gp_hyper.bias.view(J, F_ + 3)
            b[:, :F_] = torch.linspace(-2.0, 0.0, J).unsqueeze(-1)  # x sqrt(d) below
            b[:, F_] = 0.0
            b[:, F_ + 1] = torch.linspace(-10.0, -2.0, J)
            b[:, F_ + 2] = 0.0
        self.gp_mix_norm = nn.LayerNorm(e)
        self.gp_mix = nn.Linear(e + 1, 1)  # test token, log GP predictive std
        nn.init.zeros_(self.gp_mix.weight)
        nn.init.constant_(self.gp_mix.bias, init_logit)

    def states(self, train_X, train_Y, test_X):
        r"""Final states of the context token (`b x e`) and of the test tokens."""
        ctx = self.encode_train(train_X, train_Y)
        n_ctx = ctx.shape[-2]
        h = torch.cat([ctx, self.encode_x(test_X)], dim=-2)
        qX = torch.cat([train_X, test_X], dim=-2)
        sqdist = self._sqdist(qX, train_X)
        for layer in self.layers:
            k, v = layer.context_kv(h[:, :n_ctx])
            h = layer.attend(h, k, v, sqdist, token_row=True)
        return h[:, 0], h[:, n_ctx:]

    def gp_mixture(self, token, train_X, train_Y, test_X):
        r"""Log marginal-likelihood-weighted particle log-weights (`b x J`), means and
        variances (`b x J x m`) at `test_X` (float64)."""
        f64 = torch.float64
        b, n, d = train_X.shape
        J, F_ = self.particles, self.num_features
        raw = self.gp_hyper(self.gp_norm(token)).view(b, J, F_ + 3).to(f64)
        log_ls = raw[..., :d] + 0.5 * math.log(max(d, 1))  # `b x J x d`
        log_os = raw[..., F_].clamp(-6.0, 4.0)
        log_noise = raw[..., F_ + 1].clamp(-14.0, 2.0)
        ls, os, noise = log_ls.clamp(-6.0, 6.0).exp(), log_os.exp(), log_noise.exp()
        matern = (torch.arange(J, device=token.device) % 2 == 0).view(1, J, 1, 1)
        X, Xt = train_X.to(f64), test_X.to(f64)
        y = train_Y.to(f64).squeeze(-1)  # `b x n`
        obs = ~torch.isnan(y)
        y = torch.where(obs, y, 0.0)
        Z = X.unsqueeze(1) / ls.unsqueeze(-2)  # `b x J x n x d`
        Zt = Xt.unsqueeze(1) / ls.unsqueeze(-2)  # `b x J x m x d`
        om = obs.unsqueeze(1).to(f64)  # `b x 1 x n`
        K = gp_kernel(torch.cdist(Z, Z).square(), matern) * os[..., None, None]
        K = K * om.unsqueeze(-1) * om.unsqueeze(-2)
        diag = torch.where(om > 0, noise.unsqueeze(-1) + 1e-8 * os.unsqueeze(-1), 1.0)
        K = K + torch.diag_embed(diag)
        L = torch.linalg.cholesky(K)  # `b x J x n x n`
        alpha = torch.cholesky_solve(y.unsqueeze(1).unsqueeze(-1).expand(b, J, n, 1), L)
        lml = (-0.5 * (y.unsqueeze(1) * alpha.squeeze(-1)).sum(-1)
               - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
               - 0.5 * obs.sum(-1, keepdim=True).to(f64) * math.log(2 * math.pi))  # `b x J`
        ks = gp_kernel(torch.cdist(Zt, Z).square(), matern) * os[..., None, None] * om.unsqueeze(-2)
        mu = (ks @ alpha).squeeze(-1)  # `b x J x m`
        v = torch.linalg.solve_triangular(L, ks.transpose(-1, -2), upper=False)
        var = (os.unsqueeze(-1) - v.square().sum(-2)).clamp_min(0.0) + noise.unsqueeze(-1)
        logw = torch.log_softmax(raw[..., F_ + 2] + lml, dim=-1)  # `b x J`
        return logw, mu, var.clamp_min(1e-12)

    def forward(self, train_X, train_Y, test_X, kv_cache=None, train_Yvar=None):
        token, h = self.states(train_X, train_Y, test_X)
        logits = self._head_log_probs(h)
        if train_X.shape[-2] == 0:
            return logits
        logw, mu, var = self.gp_mixture(token, train_X, train_Y, test_X)
        f64 = torch.float64
        log_q = _log_gaussian_bucket_probs(mu, var.sqrt(), self.borders.to(f64))
        log_gp = torch.logsumexp(logw[..., None, None] + log_q, dim=1)  # `b x m x K`
        # the mixture's std as a feature of the weight (how sure the GP part is)
        m1 = (logw.exp().unsqueeze(-1) * mu).sum(1)
        m2 = (logw.exp().unsqueeze(-1) * (var + mu.square())).sum(1)
        log_sd = 0.5 * (m2 - m1.square()).clamp_min(1e-12).log()
        feats = torch.cat([self.gp_mix_norm(h), log_sd.unsqueeze(-1).to(h.dtype)], dim=-1)
        omega = self.gp_mix(feats).squeeze(-1).to(f64)
        out = torch.logaddexp(
            torch.log_softmax(logits.to(f64), -1) + F.logsigmoid(-omega).unsqueeze(-1),
            log_gp + F.logsigmoid(omega).unsqueeze(-1),
        )
        self._last_omega = omega.detach()
        return out.float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-n", type=int, default=60)
    p.add_argument("--emsize", type=int, default=64)
    p.add_argument("--nlayers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--init-logit", type=float, default=-2.0)
    p.add_argument("--small", action="store_true", help="smoke run")
    p.add_argument("--out", default=None, help="write OUT_gphead.json")
    args = p.parse_args()
    if args.small:
        args.batch, args.max_n, args.emsize, args.nlayers = 8, 20, 32, 2
    torch.set_num_threads(1)
    cfg = make_config(args)
    sampler = PriorSampler(cfg, torch.device("cpu"))
    borders = fit_borders(sampler, 1000, 20_000 if args.small else 200_000)
    ns = [5, 20, args.max_n] if not args.small else [5, 20]
    sets = eval_sets(sampler, ns, 16 if args.small else 256)
    m, t = cfg["model"], cfg["train"]
    torch.manual_seed(args.seed)
    net = GPHeadPFN(borders=borders, particles=args.particles, init_logit=args.init_logit, **m)
    log: list = []
    train_steps(net, sampler, borders, args.steps, t, 0, {}, sets, "gphead", log)
    if args.out:
        with open(f"{args.out}_gphead.json", "w") as f:
            json.dump({"args": vars(args), "log": log}, f, indent=1)
    print("\n| gphead | n | gap all | gap noise-free | gap noisy | err@obs | std@obs | nll@obs |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in log[-1]["eval"].items():
        print(f"| gphead | {n} | {r['gap_all']:.3f} | {r['gap_free']:.3f} | "
              f"{r['gap_noisy']:.3f} | {r.get('err_obs', float('nan')):.4f} | "
              f"{r.get('std_obs', float('nan')):.4f} | {r.get('nll_obs', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
