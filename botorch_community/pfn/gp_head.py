#!/usr/bin/env python3
r"""A GP output head whose hyperparameters the network infers from the context.

Under a GP prior the Bayes predictive that a PFN approximates is a mixture of GP
predictives over the posterior of the hyperparameters:

.. math::
    p(y \mid x, D) = \int p(y \mid x, D, \theta)\, p(\theta \mid D)\, d\theta
        \approx \sum_{j=1}^J \pi_j\, \mathcal N\big(y;\ \mu_j(x), v_j(x)\big).

:class:`GPHead` lets the network propose `J` hyperparameter particles `theta_j` (ARD
lengthscales, outputscale and noise variance; Matérn-5/2 kernels for even `j`, RBF for
odd `j`) from the final state of its learned context token, weights them by a learned
logit plus their log marginal likelihood, `log pi_j = a_j + log p(y | X, theta_j) + c`
(so the weights follow the posterior where the proposals are good), and mixes the
discretised GP mixture into the bar distribution with a weight predicted per test point.
Exact GP algebra gives what a bar distribution decoded from a token finds hardest: sharp,
exact predictions at and between the observations of nearly noise-free data.

At inference (eval mode) the particles can be refined before they are used: a few Adam
steps of ascent on each particle's own log marginal likelihood, started from the
network's proposal, for contexts of at least ``refine_min_context`` observed targets
(``gp_refine_steps`` of :class:`~botorch_community.pfn.config.PFNConfig`, off by
default; the shipped network uses 30 steps from 20 targets on). With many observations the hyperparameter posterior concentrates near its
mode, which a proposal read off one token only approximately hits; with few it is broad,
and maximising the likelihood would overfit, so small contexts keep the proposals. The
step is elementwise per particle (Adam), so a context's fit does not depend on which
other contexts share its batch.

The fit (Cholesky factors of the `n x n` kernel matrices, :class:`GPFit`) depends on the
context only, so it is computed once per context and kept in the
:class:`~botorch_community.pfn.kv_cache.KVCache`. All GP algebra runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn, Tensor

from botorch_community.pfn.bar_distribution import gaussian_bucket_probs, mix_log_probs

#: Smallest noise variance of a particle (standardised targets): the smallest the
#: training prior draws, relative to its outputscale.
GP_MIN_NOISE = 1e-6
#: Diagonal jitter relative to a particle's outputscale.
GP_JITTER = 1e-8
#: Adam learning rate of the particles' refinement (on log hyperparameters).
REFINE_LR = 0.05
#: The fewest refinement steps a context takes under a per-ratio step budget
#: (``gp_refine_steps_per_ratio``).
REFINE_MIN_STEPS = 5
#: At inference (:func:`_compact`) a particle whose weight is below this fraction of its
#: context's largest gets weight exactly zero, and particles at zero in every context of
#: a batch are dropped from the fit: after the refinement the weights usually concentrate
#: on one or two particles, and each test point then costs that many GP posteriors.
PRUNE_WEIGHT = 1e-12


class PriorLogits(NamedTuple):
    r"""The particles' weight logits from a network pass, with the number of context
    rows that pass saw: what a warm-started fit may reuse instead of a pass of its own
    (``gp_reuse_logits_growth``).

    Attributes:
        logits: `b x J` logits (float64), in the network's particle order.
        rows: The context rows of the pass.
    """

    logits: Tensor
    rows: int


@dataclass(eq=False)
class GPFit:
    r"""The GP particles of a batch of contexts, fitted to their targets (float64).

    Attributes:
        Z: `b x J x n x d` context inputs divided by each particle's lengthscales.
        inv_lengthscale: `b x J x d`.
        outputscale: `b x J`.
        noise: `b x J` noise variances.
        L: `b x J x n x n` Cholesky factors of `K + noise I` (identity rows for
            missing targets).
        alpha: `b x J x n`, `(K + noise I)^{-1} y` (zero for missing targets).
        log_weights: `b x J` normalised particle log-weights.
        observed: `b x n`, 1 for a known target, 0 for a missing one.
        mean: `b x J` constant prior means (zero unless the head fits them).
        matern: `1 x J x 1 x 1` bool, the particles' kernels (Matérn-5/2 or RBF).
        theta: `b x J x (d + 2)` the raw particles as fitted (log lengthscales before
            the `sqrt(d)` scaling, log outputscale, log noise), in the network's
            particle order and never pruned: a warm start for the next fit.
        matern_count: With the particles ordered Matérn first (:func:`_compact`), how
            many are Matérn (a host-side int, so predictions need no host sync to choose
            the kernels; e.g. under CUDA graph capture); None for any other order.
        prior_logits: The weight logits the fit used (before the marginal likelihoods)
            and the rows of the network pass they came from: a warm start for the next
            fit, as `theta` is.
    """

    Z: Tensor
    inv_lengthscale: Tensor
    outputscale: Tensor
    noise: Tensor
    L: Tensor
    alpha: Tensor
    log_weights: Tensor
    observed: Tensor
    mean: Tensor
    matern: Tensor
    theta: Tensor
    matern_count: Optional[int] = None
    prior_logits: Optional[PriorLogits] = None

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, n) for n in _GPFIT_FIELDS)


class GPMixture(NamedTuple):
    r"""The GP head's predictive at `m` points: a Gaussian mixture per point, on the
    network's standardised target axis (float64).

    Attributes:
        mean: `b x m x J` the particles' predictive means.
        var: `b x m x J` their variances.
        log_weights: `b x m x J` normalised particle log-weights (per context: equal
            along `m`).
    """

    mean: Tensor
    var: Tensor
    log_weights: Tensor


_GPFIT_FIELDS = ("Z", "inv_lengthscale", "outputscale", "noise", "L", "alpha", "log_weights",
                 "observed", "mean", "matern", "theta")  # fmt: skip


def refinement_rows(
    X: Tensor, y: Tensor, observed: Tensor, max_rows: int, known_noise: Optional[Tensor] = None
) -> tuple[Tensor, ...]:
    r"""At most `max_rows` observed rows of each context for the particles' ascent.

    A quarter are the rows with the largest targets (where BO looks, and where a
    hyperparameter misfit shows most), the rest are spread evenly over the remaining
    observed rows in their order (for BO data: over the run). Deterministic.

    Args:
        X: `b x n x d`, y: `b x n`, observed: `b x n` (1: known target), `n > max_rows`.
        known_noise: `b x n` known noise variances (NaN: unknown), or None.

    Returns:
        `(X', y', observed')` with `max_rows` rows (rows of contexts with fewer observed
        targets are padded with unobserved rows), and `known_noise'` if it was given.
    """
    b, n = y.shape
    obs = observed > 0
    k_top = max_rows // 4
    top = torch.where(obs, y, float("-inf")).topk(k_top, dim=-1).indices  # `b x k_top`
    rest = obs.clone()
    rest.scatter_(-1, top, False)
    count = rest.sum(-1, keepdim=True)  # `b x 1`
    k_rest = max_rows - k_top
    rank = rest.cumsum(-1) - 1  # position among the remaining observed rows
    step = count.div(k_rest, rounding_mode="floor").clamp_min(1)
    pick = rest & (rank % step == 0) & (rank.div(step, rounding_mode="floor") < k_rest)
    chosen = torch.zeros_like(obs).scatter_(-1, top, True) | pick  # `b x n`
    # the chosen rows first (stable), then cut to `max_rows`
    order = torch.sort((~chosen).to(torch.int8), dim=-1, stable=True).indices[:, :max_rows]
    keep = chosen.gather(-1, order).to(observed.dtype)
    Xs = X.gather(-2, order.unsqueeze(-1).expand(-1, -1, X.shape[-1]))
    out = (Xs, y.gather(-1, order) * keep, observed.gather(-1, order) * keep)
    if known_noise is not None:
        out = out + (known_noise.gather(-1, order),)
    return out


def _compact(fit: GPFit) -> GPFit:
    r"""`fit` for inference: negligible particles at weight zero, those negligible in
    every context dropped (:data:`PRUNE_WEIGHT`), and the rest ordered Matérn first
    (:func:`unit_kernel` then computes each kernel on a slice). Zeroing is per context,
    so a context's predictive does not depend on its batch; the order does not change
    the mixture."""
    log_w = fit.log_weights  # `b x J`
    keep_mask = torch.ones(log_w.shape[-1], dtype=torch.bool, device=log_w.device)
    if PRUNE_WEIGHT > 0:
        small = log_w < log_w.amax(-1, keepdim=True) + math.log(PRUNE_WEIGHT)
        if bool(small.any()):
            log_w = torch.log_softmax(log_w.masked_fill(small, float("-inf")), dim=-1)
            keep_mask = (~small).any(0)  # particles some context uses
    is_m = fit.matern.reshape(-1)
    keep = torch.cat([(keep_mask & is_m).nonzero(), (keep_mask & ~is_m).nonzero()]).squeeze(-1)
    fields = {n: getattr(fit, n) for n in _GPFIT_FIELDS}
    fields["log_weights"] = log_w
    if not torch.equal(keep, torch.arange(log_w.shape[-1], device=keep.device)):
        for n in _GPFIT_FIELDS:
            if n not in ("observed", "theta"):  # `b x J ...` (matern: `1 x J x 1 x 1`)
                fields[n] = fields[n].index_select(1, keep)
    fields["matern_count"] = int((keep_mask & is_m).sum())  # one host sync per fit
    return GPFit(**fields, prior_logits=fit.prior_logits)


def _floored_log(q: Tensor) -> Tensor:
    r"""`log q` floored at `log(1e-30)`, as for a single Gaussian's buckets."""
    return q.clamp_min(1e-30).log()


def _matern52(r2: Tensor) -> Tensor:
    if r2.requires_grad:
        r = (r2.clamp_min(1e-30) * 5.0).sqrt()  # finite gradients at r2 = 0
        return (torch.addcmul(r, r, r, value=1.0 / 3.0) + 1.0) * torch.exp(-r)
    return _matern52_in_place(r2)[0]


def _matern52_in_place(r2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""`(k, r, e^{-r})` of Matérn-5/2 without a graph (encodes, the refinement): the same
    operations as :func:`_matern52`'s graph path (equal values) in three buffers instead
    of eight (at n = 1000 each pass over the `b x J x n x n` kernel costs more in page
    faults than in arithmetic); `r` and `e^{-r}` are the caller's to reuse."""
    r = r2.clamp_min(1e-30).mul_(5.0).sqrt_()
    e = torch.neg(r).exp_()
    return torch.addcmul(r, r, r, value=1.0 / 3.0).add_(1.0).mul_(e), r, e


def _by_kernel(
    r2: Tensor,
    matern: Tensor,
    matern_count: Optional[int],
    f_matern: Callable[[Tensor], tuple[Tensor, ...]],
    f_rbf: Callable[[Tensor], tuple[Tensor, ...]],
) -> tuple[Tensor, ...]:
    r"""`f_matern` on the Matérn particles' slices of `r2` (`... x J x p x q`) and
    `f_rbf` on the RBF ones, each output reassembled in the particles' order.

    `matern` is `1 x J x 1 x 1` (one kernel per particle): each function runs only on its
    own particles (half the work of computing both and selecting). With `matern_count`
    (the particles ordered Matérn first, see :class:`GPFit`) the split is made without
    reading `matern` on the host; otherwise the order is read: the heads' alternation
    (Matérn for even `j`), Matérn first, or any other order (select, then restore).
    """
    J = r2.shape[-3]
    if matern_count is None:  # read the kernels' order on the host
        kinds = matern.reshape(-1).tolist()
        matern_count = sum(kinds)
        if 0 < matern_count < J and not all(kinds[:matern_count]):
            if J % 2 == 0 and kinds == [j % 2 == 0 for j in range(J)]:  # alternation
                pairs = r2.unflatten(-3, (J // 2, 2))  # `... x J/2 x 2 x p x q`
                outs = zip(f_matern(pairs[..., 0, :, :]), f_rbf(pairs[..., 1, :, :]))
                return tuple(torch.stack([a, b], -3).flatten(-4, -3) for a, b in outs)
            is_m = matern.reshape(-1)
            im, ir = is_m.nonzero().squeeze(-1), (~is_m).nonzero().squeeze(-1)
            order = torch.cat([im, ir]).argsort()  # back to the particles' order
            outs = zip(f_matern(r2.index_select(-3, im)), f_rbf(r2.index_select(-3, ir)))
            return tuple(torch.cat([a, b], -3).index_select(-3, order) for a, b in outs)
    if matern_count == J:
        return f_matern(r2)
    if matern_count == 0:
        return f_rbf(r2)
    r2m, r2r = r2.split([matern_count, J - matern_count], dim=-3)
    return tuple(torch.cat([a, b], dim=-3) for a, b in zip(f_matern(r2m), f_rbf(r2r)))


def unit_kernel(r2: Tensor, matern: Tensor, matern_count: Optional[int] = None) -> Tensor:
    r"""Unit-variance Matérn-5/2 (where `matern`) or RBF kernel of scaled squared
    distances `r2` (`... x J x p x q`), with finite gradients at `r2 = 0`.

    `matern` is `1 x J x 1 x 1` (one kernel per particle; see :func:`_by_kernel`, which
    `matern_count` goes to).
    """
    if matern.numel() != r2.shape[-3] or r2.dim() < 3:
        return torch.where(matern, _matern52(r2), torch.exp(-0.5 * r2))
    return _by_kernel(r2, matern, matern_count,
                      lambda q: (_matern52(q),), lambda q: (torch.exp(-0.5 * q),))[0]  # fmt: skip


def _matern52_and_slope(r2: Tensor) -> tuple[Tensor, Tensor]:
    k, r, e = _matern52_in_place(r2)
    return k, r.add_(1.0).mul_(e).mul_(-5.0 / 6.0)  # -5/6 (1 + r) e^-r


def _rbf_and_slope(r2: Tensor) -> tuple[Tensor, Tensor]:
    k = torch.exp(-0.5 * r2)
    return k, -0.5 * k


def unit_kernel_slope(r2: Tensor, matern: Tensor) -> tuple[Tensor, Tensor]:
    r""":func:`unit_kernel` and its derivative in `r2`, from one exponential each
    (the refinement's closed-form gradient; no autograd, so no floor at `r2 = 0`).

    With :math:`r = \sqrt{5 r_2}`, Matérn-5/2 is :math:`k = (1 + r + r^2/3) e^{-r}` and
    :math:`\partial k / \partial r_2 = -\tfrac{5}{6} (1 + r) e^{-r}` (finite at
    :math:`r_2 = 0`); RBF :math:`k = e^{-r_2/2}`, :math:`\partial k / \partial r_2 = -k/2`.

    Args:
        r2: `... x J x p x q` scaled squared distances.
        matern: `1 x J x 1 x 1` bool, the particles' kernels.

    Returns:
        `(k, dk_dr2)`, each shaped like `r2`.
    """
    k, slope = _by_kernel(r2, matern, None, _matern52_and_slope, _rbf_and_slope)
    return k, slope


def _sqdist(A: Tensor, B: Tensor) -> Tensor:
    r"""`... x p x q` squared distances of `... x p x d` and `... x q x d` (float64, so
    the expanded form's cancellation stays far below float32 round-off)."""
    sq = A.square().sum(-1, keepdim=True) + B.square().sum(-1).unsqueeze(-2)
    d2 = sq.add_(A @ B.transpose(-1, -2), alpha=-2.0)  # `... x p x q`
    return d2.clamp_min(0.0) if d2.requires_grad else d2.clamp_min_(0.0)


def _robust_cholesky(K: Tensor, diag: Tensor, outputscale: Tensor, tries: int = 4) -> Tensor:
    r"""Cholesky factor of `K + diag(diag)`, adding jitter of `1e-6, 1e-4, ...` times the
    outputscale to the diagonal of the matrices that fail (float64 rarely does: the
    noise is at least ``GP_MIN_NOISE``).

    Args:
        K: `b x J x n x n`; diag: `b x J x n`; outputscale: `b x J`.
    """
    def with_diag(d: Tensor) -> Tensor:
        Kd = K.clone()
        Kd.diagonal(dim1=-2, dim2=-1).add_(d)
        return Kd

    L, info = torch.linalg.cholesky_ex(with_diag(diag))
    jitter = 1e-6
    for _ in range(tries):
        bad = info > 0  # `b x J`
        if not bool(bad.any()):
            return L
        extra = torch.where(bad, jitter * outputscale, 0.0).unsqueeze(-1)
        diag = diag + extra
        L, info = torch.linalg.cholesky_ex(with_diag(diag))
        jitter *= 100.0
    if bool((info > 0).any()):
        raise RuntimeError(
            "The GP head's kernel matrix is not positive definite even with jitter "
            f"{jitter / 100:g} x outputscale; the context inputs may contain NaN or inf."
        )
    return L


class GPHead(nn.Module):
    r"""GP particles from the context token, and their mixture at test points."""

    def __init__(
        self,
        emsize: int,
        num_features: int,
        particles: int = 4,
        init_logit: float = -2.0,
    ) -> None:
        r"""
        Args:
            emsize: Token embedding size.
            num_features: The most input dimensions of the network.
            particles: `J`, the number of hyperparameter particles.
            init_logit: Initial logit of the GP mixture's weight in the output.
        """
        super().__init__()
        if particles < 1:
            raise ValueError(f"gp_particles must be at least 1, got {particles}.")
        self.num_features, self.particles = num_features, particles
        self.norm = nn.LayerNorm(emsize)
        self._init_proposal(emsize)
        # mixing logit of the GP part from the test token and the mixture's log std
        self.mix_norm = nn.LayerNorm(emsize)
        self.mix = nn.Linear(emsize + 1, 1)
        nn.init.zeros_(self.mix.weight)
        nn.init.constant_(self.mix.bias, init_logit)

    def fit(
        self,
        token: Optional[Tensor],
        context_X: Tensor,
        context_Y: Tensor,
        refine_steps: int = 0,
        refine_min_context: int = 20,
        refine_max_rows: Optional[int] = None,
        known_noise: Optional[Tensor] = None,
        constant_mean: bool = False,
        init_particles: Optional[Tensor] = None,
        min_noise: float = GP_MIN_NOISE,
        steps_per_ratio: float = 0.0,
        warm_tol: float = 0.0,
        init_logits: Optional[PriorLogits] = None,
    ) -> Optional[GPFit]:
        r"""Fit the particles to a batch of contexts.

        Args:
            token: `b x e` final states of the context token (what :meth:`propose`
                reads; `b x (d + 1) x e` for :class:`CellGPHead`). None (no network
                pass) needs `init_particles` and `init_logits`, and every context
                refined (eval mode, `refine_steps > 0`, at least `refine_min_context`
                observed targets): only a context left unrefined would need the
                network's proposals.
            context_X: `b x n x d` inputs.
            context_Y: `b x n x 1` standardised targets (NaN: missing).
            refine_steps: Adam steps of marginal-likelihood ascent on the particles
                (eval mode only; 0: use the proposals as they are).
            refine_min_context: Refine only contexts with at least this many observed
                targets.
            refine_max_rows: Refine on at most this many observed rows of a context
                (:func:`refinement_rows`; None: all). The refined particles are then
                conditioned on every row.
            known_noise: `b x n x 1` known noise variances of the standardised
                targets (NaN: unknown; the noise hints of ``noise_hint`` networks). A
                row with a known variance gets it (at least :data:`GP_MIN_NOISE`) in
                every particle instead of the particle's noise, as a fixed-noise GP
                does; where every observed row's noise is known, new observations get
                their median.
            constant_mean: Give each particle the constant prior mean that maximises
                its marginal likelihood (the generalised-least-squares mean, as a
                fitted ``SingleTaskGP``'s ``ConstantMean``) instead of zero. BO data
                cluster where the targets are high, so their sample mean (zero after
                standardising) overstates the level far from the data; the GLS mean
                discounts clustered rows.
            init_particles: `b x J x (d + 2)` raw particles (a fit's ``theta``) to start
                the refinement from instead of the network's proposals, e.g. those of
                the previous BO iteration's fit (warm start; contexts that are not
                refined keep the proposals).
            min_noise: The smallest noise variance a particle infers (standardised
                targets; default :data:`GP_MIN_NOISE`). Known noise variances are used
                as given (at least :data:`GP_MIN_NOISE`).
            steps_per_ratio: With a positive value `c` and no `init_particles`, a
                context of `m` observed targets takes
                `min(refine_steps, max(REFINE_MIN_STEPS, ceil(c m / d)))` steps (early
                stopping where there are few observations per lengthscale).
            warm_tol: With a positive value and `init_particles`, the refinement of a
                context stops once it is stationary: no raw parameter's gradient of
                the log marginal likelihood per observation reaches `warm_tol`
                (:meth:`_refine`'s `stop_tol`). A warm start from the previous BO
                iteration's fit is usually there already; Adam's first steps, of
                about its learning rate in every parameter whatever the gradient,
                would only move it away and back.
            init_logits: The particles' weight logits to use instead of the network's
                (`b x J` or `1 x J`; those of an earlier fit's pass, see
                :class:`PriorLogits`); recorded in the fit's ``prior_logits``.

        Returns:
            A :class:`GPFit`, or None for an empty context (`n = 0`).
        """
        b, n, d = context_X.shape
        if n == 0:
            return None
        f64 = torch.float64
        with torch.autocast(context_X.device.type, enabled=False):
            X = context_X.to(f64)
            y = context_Y.to(f64).squeeze(-1)  # `b x n`
            observed = (~torch.isnan(y)).to(f64)
            if token is None:
                if init_particles is None or init_logits is None:
                    raise ValueError(
                        "GPHead.fit without a context token (no network pass) needs "
                        "init_particles and init_logits."
                    )
                if not self.refines_every_context(context_Y, refine_steps, refine_min_context):
                    raise ValueError(
                        "GPHead.fit without a context token needs every context refined "
                        "(eval mode, refine_steps > 0, at least refine_min_context "
                        "observed targets): an unrefined context keeps the network's "
                        "proposals."
                    )
                theta = init_particles.to(f64).expand(b, -1, -1)
            else:
                theta, logit = self.propose(token, d)  # `b x J x (d + 2)`, `b x J`
            if init_logits is None:
                prior = PriorLogits(logit.detach(), n)
            else:
                logit = init_logits.logits.to(theta).expand(b, -1)
                prior = init_logits
            y = torch.nan_to_num(y, nan=0.0)
            known = None if known_noise is None else known_noise.to(f64).reshape(b, n)
            conditioned = None  # `(parts, lml)` of `theta` on the context, once computed
            if refine_steps > 0 and not self.training:
                start = theta
                if init_particles is not None:
                    if init_particles.shape != theta.shape:
                        raise ValueError(
                            f"init_particles has shape {tuple(init_particles.shape)}; this "
                            f"fit's particles have {tuple(theta.shape)} (batch x particles "
                            "x (d + 2)): a warm start needs the same batch, d and network."
                        )
                    start = init_particles.to(theta).detach()
                theta, conditioned = self._refine(
                    start, X, y, observed, refine_steps, refine_min_context, refine_max_rows,
                    known, constant_mean, fallback=theta, min_noise=min_noise,
                    steps_per_ratio=0.0 if init_particles is not None else steps_per_ratio,
                    stop_tol=warm_tol if init_particles is not None else 0.0,
                )
            if conditioned is None:
                conditioned = self._condition(
                    theta, X, y, observed, known, constant_mean, min_noise=min_noise
                )
            (Z, inv_ls, os, noise, L, alpha, mean), lml = conditioned
            if known is not None:
                # new observations: the median known noise where every observed row's is known
                obs_known = torch.where(observed > 0, ~torch.isnan(known), True).all(-1)
                typical = torch.nanmedian(torch.where(observed > 0, known, float("nan")), -1)
                typical = typical.values.nan_to_num(GP_MIN_NOISE).clamp_min(GP_MIN_NOISE)  # `b`
                noise = torch.where(obs_known.unsqueeze(-1), typical.unsqueeze(-1), noise)
            log_w = torch.log_softmax(logit + lml, dim=-1)
            fit = GPFit(Z, inv_ls, os, noise, L, alpha, log_w, observed, mean,
                        self._is_matern(X.device), theta.detach(), prior_logits=prior)  # fmt: skip
            if not self.training:
                fit = _compact(fit)
        return fit

    def refines_every_context(
        self, context_Y: Tensor, refine_steps: int, refine_min_context: int
    ) -> bool:
        r"""Whether :meth:`fit` refines every context of `context_Y` (`b x n x 1`, NaN:
        missing) with these settings: eval mode, `refine_steps > 0` and at least
        `refine_min_context` observed targets in each (:meth:`_refine`'s test). Only then
        can a fit do without the network's proposals (a warm start without a pass)."""
        if self.training or refine_steps <= 0:
            return False
        observed = (~torch.isnan(context_Y)).sum(-2)  # `b x 1`
        return bool((observed >= refine_min_context).all())

    def _init_proposal(self, emsize: int) -> None:
        r"""The map from the context token to the particles (read by :meth:`propose`)."""
        J, nf = self.particles, self.num_features
        # per particle: nf log lengthscales, log outputscale, log noise, weight logit.
        # A zero map plus spread biases: at the start the particles are fixed guesses
        # (lengthscales 0.14 .. 1 x sqrt(d), noise 5e-5 .. 0.14), weighted by their
        # marginal likelihood.
        self.hyper = nn.Linear(emsize, J * (nf + 3))
        nn.init.zeros_(self.hyper.weight)
        with torch.no_grad():
            bias = self.hyper.bias.view(J, nf + 3)
            bias[:, :nf] = torch.linspace(-2.0, 0.0, J).unsqueeze(-1)
            bias[:, nf] = 0.0
            bias[:, nf + 1] = torch.linspace(-10.0, -2.0, J)
            bias[:, nf + 2] = 0.0

    def propose(self, token: Tensor, d: int) -> tuple[Tensor, Tensor]:
        r"""The network's particles for a batch of contexts.

        Args:
            token: `b x e` final states of the context token.
            d: The input dimension of the contexts.

        Returns:
            `(theta, logit)`: `b x J x (d + 2)` raw particles (log lengthscales before
            the `sqrt(d)` scaling, log outputscale, log noise) and `b x J` weight logits,
            float64.
        """
        J, nf = self.particles, self.num_features
        z = self.norm(token.to(self.norm.weight.dtype))
        raw = self.hyper(z).view(token.shape[0], J, nf + 3).to(torch.float64)
        theta = torch.cat([raw[..., :d], raw[..., nf : nf + 2]], dim=-1)  # `b x J x (d+2)`
        return theta, raw[..., nf + 2]

    def _condition(
        self,
        theta: Tensor,
        X: Tensor,
        y: Tensor,
        observed: Tensor,
        known_noise: Optional[Tensor] = None,
        constant_mean: bool = False,
        with_grad: bool = False,
        min_noise: float = GP_MIN_NOISE,
    ) -> tuple:
        r"""The particles `theta` (`b x J x (d + 2)`, raw) conditioned on a context
        (`known_noise`: `b x n` known noise variances, NaN: unknown; `constant_mean`:
        see :meth:`fit`).

        With a constant mean, each particle's mean is the generalised-least-squares
        estimate (the maximiser of its marginal likelihood for fixed kernel
        hyperparameters), clamped to the range of the observed targets:

        .. math::
            m_j = \frac{1^T K_j^{-1} y}{1^T K_j^{-1} 1}.

        With `with_grad`, also the gradient of each particle's log marginal likelihood
        with respect to its raw particle, in closed form (the refinement's ascent; an
        autograd graph through the Cholesky factor cost 2-3x more):

        .. math::
            \frac{\partial \log p(y)}{\partial \theta}
                = \tfrac12 \operatorname{tr}\big((\alpha\alpha^T - K^{-1})
                  \tfrac{\partial K}{\partial \theta}\big),

        where the mean is held fixed: at the GLS mean its own derivative is zero, and a
        clamped mean does not move with `theta`. The raw parameters' clamps pass the
        gradient inside their bounds (bounds included) and block it outside, as
        ``torch.clamp``'s backward does.

        Returns:
            `((Z, inv_lengthscale, outputscale, noise, L, alpha, mean), lml)`: those
            fields of a :class:`GPFit` (`noise`: the particles' own) and the `b x J` log
            marginal likelihoods (profiled over the mean); with `with_grad` a third
            entry, the `b x J x (d + 2)` gradient of `lml` in `theta`.
        """
        b, n, d = X.shape
        J = theta.shape[1]
        # lengthscales grow like sqrt(d), as in the prior
        raw_ls = theta[..., :d] + 0.5 * math.log(max(d, 1))
        log_ls = raw_ls.clamp(-7.0, 7.0)
        os = theta[..., d].clamp(-7.0, 4.0).exp()  # `b x J`
        log_noise_min = math.log(min_noise)
        noise = theta[..., d + 1].clamp(log_noise_min, 2.0).exp()
        inv_ls = torch.exp(-log_ls)  # `b x J x d`
        Z = X.unsqueeze(1) * inv_ls.unsqueeze(-2)  # `b x J x n x d`
        om = observed.unsqueeze(1)  # `b x 1 x n`
        # missing rows/cols: 0 (`b x 1 x n x n`; None where every target is observed:
        # checked on the host, as the fit syncs anyway, except in training)
        check = with_grad or not self.training
        mm = None if check and bool((observed > 0).all()) else om.unsqueeze(-1) * om.unsqueeze(-2)
        r2 = _sqdist(Z, Z)
        if with_grad:
            k, dk_dr2 = unit_kernel_slope(r2, self._is_matern(X.device))
        else:
            k = unit_kernel(r2, self._is_matern(X.device))
        K = k * os[..., None, None] if k.requires_grad else k.mul_(os[..., None, None])
        if mm is not None:
            K = K * mm
        row_noise = noise.unsqueeze(-1)  # `b x J x 1`
        if known_noise is not None:
            kn = known_noise.clamp_min(GP_MIN_NOISE).unsqueeze(1)  # `b x 1 x n`
            row_noise = torch.where(torch.isnan(kn), row_noise, kn)  # `b x J x n`
        diag = torch.where(om > 0, row_noise + (GP_JITTER * os).unsqueeze(-1), 1.0)
        L = _robust_cholesky(K, diag, os)
        yj = y.unsqueeze(1).expand(b, J, n)
        if constant_mean:
            ones = om.expand(b, J, n)  # missing rows: 0 (and identity rows of L)
            a = torch.linalg.solve_triangular(L, torch.stack([ones, yj], -1), upper=False)
            denom = a[..., 0].square().sum(-1)  # `1^T K^{-1} 1`, `b x J`
            mean = (a[..., 0] * a[..., 1]).sum(-1) / denom.clamp_min(1e-300)
            big = torch.finfo(y.dtype).max
            lo = torch.where(observed > 0, y, big).amin(-1, keepdim=True)  # `b x 1`
            hi = torch.where(observed > 0, y, -big).amax(-1, keepdim=True)
            mean = torch.where(denom > 0, torch.minimum(torch.maximum(mean, lo), hi), 0.0)
            yj = yj - mean.unsqueeze(-1) * ones
        else:
            mean = torch.zeros_like(os)
        alpha = torch.cholesky_solve(yj.unsqueeze(-1), L).squeeze(-1)  # `b x J x n`
        lml = (
            -0.5 * (yj * alpha).sum(-1)
            - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            - 0.5 * observed.sum(-1, keepdim=True) * math.log(2 * math.pi)
        )  # `b x J`
        parts = (Z, inv_ls, os, noise, L, alpha, mean)
        if not with_grad:
            return parts, lml
        # W = alpha alpha^T - K^{-1}; only observed rows/cols enter (dK is 0 elsewhere)
        W = alpha.unsqueeze(-1) * alpha.unsqueeze(-2) - torch.cholesky_inverse(L)
        W_diag = W.diagonal(dim1=-2, dim2=-1)  # `b x J x n`
        obs_w = (W_diag * om).sum(-1)  # `b x J`
        g_os = 0.5 * ((W * K).sum((-2, -1)) + GP_JITTER * os * obs_w)
        if known_noise is None:
            g_noise = 0.5 * noise * obs_w
        else:  # rows of known noise do not depend on the particle's noise
            unknown = torch.isnan(known_noise).to(W).unsqueeze(1) * om  # `b x 1 x n`
            g_noise = 0.5 * noise * (W_diag * unknown).sum(-1)
        # d r2_ik / d log l_j = -2 (z_ij - z_kj)^2; with M = W * os * dk/dr2 (symmetric),
        # sum_ik M_ik (z_ij - z_kj)^2 = 2 sum_i z_ij^2 rowsum(M)_i - 2 sum_i z_ij (M Z)_ij
        M = W * dk_dr2 * os[..., None, None]  # `b x J x n x n`
        if mm is not None:
            M = M * mm
        quad = (Z.square() * M.sum(-1, keepdim=True)).sum(-2) - (Z * (M @ Z)).sum(-2)
        g_ls = -2.0 * quad  # `b x J x d`

        def inside(v: Tensor, lo: float, hi: float) -> Tensor:
            return ((v >= lo) & (v <= hi)).to(v)

        grad = torch.cat([
            g_ls * inside(raw_ls, -7.0, 7.0),
            (g_os * inside(theta[..., d], -7.0, 4.0)).unsqueeze(-1),
            (g_noise * inside(theta[..., d + 1], log_noise_min, 2.0)).unsqueeze(-1),
        ], dim=-1)  # fmt: skip
        return parts, lml, grad

    def _refine(
        self,
        theta: Tensor,
        X: Tensor,
        y: Tensor,
        observed: Tensor,
        steps: int,
        min_context: int,
        max_rows: Optional[int] = None,
        known_noise: Optional[Tensor] = None,
        constant_mean: bool = False,
        fallback: Optional[Tensor] = None,
        min_noise: float = GP_MIN_NOISE,
        steps_per_ratio: float = 0.0,
        stop_tol: float = 0.0,
    ) -> tuple[Tensor, Optional[tuple]]:
        r"""`steps` Adam steps of ascent on each particle's log marginal
        likelihood per observation, for the contexts with at least
        `min_context` observed targets (the others keep `theta`).

        Adam's update is elementwise and each particle's objective is its own, so a
        context's result does not depend on its batch. The result is held constant for
        gradients: where the context depends on differentiable inputs (the extended
        contexts of :class:`MultivariatePFNModel`), gradients are taken at fixed refined
        hyperparameters, as BoTorch does for a fitted GP's fantasies. `eps = 1e-4` keeps the update
        proportional to the gradient where it is near zero, so round-off in the
        proposal is not amplified into a step. With `max_rows`, the ascent runs on a
        subset of each context's rows (:func:`refinement_rows`): each step costs
        `O(max_rows^3)` instead of `O(n^3)`.

        Args:
            theta: `b x J x (d + 2)` raw particles (float64).
            X, y, observed: The context, `b x n x d`, `b x n`, `b x n` (float64).

            fallback: The particles of the contexts that are not refined (default:
                `theta`).
            steps_per_ratio: With a positive value `c`, a context of `m` observed
                targets in `d` inputs stops after
                `min(steps, max(REFINE_MIN_STEPS, ceil(c m / d)))` steps (its particles
                are held while the others go on).
            stop_tol: With a positive value, a context stops (its particles held) at
                the first step where no raw parameter's gradient of the log marginal
                likelihood per observation reaches `stop_tol` in absolute value, and the
                ascent ends when every context has stopped.

        Returns:
            `b x J x (d + 2)`: the refined particles (detached from the network) where
            refined, `fallback` elsewhere; and the refined particles' conditioning on
            the context (:meth:`_condition`'s `(parts, lml)`) where the ascent ended at
            the stationarity check of `stop_tol` with every context refined on all its
            rows and no input needs gradients (the check has just computed it: a
            warm start that is already stationary then costs one conditioning, not
            two), else None.
        """
        fallback = theta if fallback is None else fallback
        n_obs = observed.sum(-1)  # `b`
        todo = n_obs >= min_context
        if not bool(todo.any()):
            return fallback, None
        # A graph of its own, even under no_grad or inference_mode (posterior calls).
        with torch.inference_mode(False), torch.enable_grad():
            # the refined particles are constants of the context for gradients (as a
            # fitted GP's hyperparameters are): no graph into the context's inputs
            Xr, yr, obs = (t[todo].detach().clone() for t in (X, y, observed))
            kn = None if known_noise is None else known_noise[todo].detach().clone()
            if max_rows is not None and Xr.shape[-2] > max_rows:
                if kn is None:
                    Xr, yr, obs = refinement_rows(Xr, yr, obs, max_rows)
                else:
                    Xr, yr, obs, kn = refinement_rows(Xr, yr, obs, max_rows, kn)
            per_obs = obs.sum(-1, keepdim=True)  # `b' x 1`
            budget = None
            if steps_per_ratio > 0:
                # each context's own budget, from all its observations (not the subset)
                m = n_obs[todo].detach()  # `b'`
                budget = (steps_per_ratio * m / X.shape[-1]).ceil()
                budget = budget.clamp(min(REFINE_MIN_STEPS, steps), steps)
                steps = int(budget.max())  # one host sync per fit
            # the check's conditioning is the fit's where it covers the whole context
            # and nothing needs gradients through the context (it runs detached)
            whole = (bool(todo.all()) and Xr.shape[-2] == X.shape[-2]
                     and not any(t is not None and t.requires_grad
                                 for t in (X, y, observed, known_noise)))  # fmt: skip
            p = theta[todo].detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([p], lr=REFINE_LR, eps=1e-4)
            done = None  # `b'`: contexts whose ascent has stopped (see `stop_tol`)
            for i in range(steps):
                with torch.no_grad():  # closed-form gradient (see _condition)
                    parts, lml, grad = self._condition(p, Xr, yr, obs, kn, constant_mean,
                                                       with_grad=True, min_noise=min_noise)
                p.grad = -grad / per_obs.unsqueeze(-1)  # ascent on lml per observation
                if stop_tol > 0:  # stationary: no raw parameter's slope reaches stop_tol
                    small = p.grad.abs().amax((-2, -1)) < stop_tol  # `b'`
                    done = small if done is None else done | small
                    if bool(done.all()):  # one host sync per step
                        if whole:  # `p` has not moved since `parts`
                            return p.detach(), (parts, lml)
                        break
                move = None if budget is None else budget > i  # `b'`
                if done is not None:
                    move = ~done if move is None else move & ~done
                if move is None:
                    opt.step()
                    continue
                held = p.detach().clone()
                opt.step()
                with torch.no_grad():  # stopped contexts keep their particles
                    p.copy_(torch.where(move.view(-1, 1, 1), p, held))
            refined = p.detach()
        full = fallback.detach().clone()
        full[todo] = refined
        return torch.where(todo.view(-1, 1, 1), full, fallback), None

    def _is_matern(self, device: torch.device) -> Tensor:
        return (torch.arange(self.particles, device=device) % 2 == 0).view(1, -1, 1, 1)

    def predict(
        self, fit: GPFit, query_X: Tensor, observation_noise: bool = True
    ) -> tuple[Tensor, Tensor]:
        r"""Means and variances of the particles' predictives.

        Args:
            fit: From :meth:`fit`, batch `b`.
            query_X: `b x m x d`.
            observation_noise: Predict noisy targets (True) or the latent function.

        Returns:
            `(mu, var)`, each `b x J x m` (float64).
        """
        with torch.autocast(query_X.device.type, enabled=False):
            _, mu, v = self._conditioned(fit, query_X)
            os = fit.outputscale.unsqueeze(-1)
            var = os - v.square().sum(-2)
            if observation_noise:
                var = var.clamp_min(0.0) + fit.noise.unsqueeze(-1)
            else:  # floored at the jitter: a finite sd and gradient at the observations
                var = var.clamp_min(GP_JITTER * os)
        return mu, var

    def mixture(
        self, fit: GPFit, query_X: Tensor, observation_noise: bool = True
    ) -> GPMixture:
        r"""The particles' mixture at `query_X` (`b x m x d`), components last.

        Args:
            fit: From :meth:`fit`, batch `b`.
            query_X: `b x m x d`.
            observation_noise: The mixture of noisy targets (True) or of the latent
                function.

        Returns:
            A :class:`GPMixture` with `b x m x J` fields.
        """
        mu, var = self.predict(fit, query_X, observation_noise)  # `b x J x m`
        log_w = fit.log_weights.unsqueeze(-2).expand(-1, mu.shape[-1], -1)
        return GPMixture(mu.transpose(-1, -2), var.transpose(-1, -2), log_w)

    def _conditioned(self, fit: GPFit, query_X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""The particles' scaled queries `Zq` (`b x J x m x d`), posterior means `mu`
        (`b x J x m`) and `v = L^{-1} k(context, queries)` (`b x J x n x m`), float64."""
        Zq = query_X.to(torch.float64).unsqueeze(1) * fit.inv_lengthscale.unsqueeze(-2)
        os = fit.outputscale[..., None, None]
        ks = unit_kernel(_sqdist(Zq, fit.Z), fit.matern, fit.matern_count) * os
        ks = ks * fit.observed[:, None, None, :]  # `b x J x m x n`
        mu = (ks @ fit.alpha.unsqueeze(-1)).squeeze(-1) + fit.mean.unsqueeze(-1)
        v = torch.linalg.solve_triangular(fit.L, ks.transpose(-1, -2), upper=False)
        return Zq, mu, v

    def mixture_correlation(
        self, fit: GPFit, query_X: Tensor, observation_noise: bool = True
    ) -> Tensor:
        r"""Correlation matrix of the particles' mixture at `q` joint points.

        Each particle's joint predictive of noisy targets (or, without
        `observation_noise`, of the latent function) at the `q` points is Gaussian
        (mean :math:`\mu_j`, covariance :math:`\Sigma_j`); the mixture with weights
        :math:`w_j` has covariance
        :math:`\sum_j w_j (\Sigma_j + \mu_j \mu_j^T) - m m^T`, :math:`m = \sum_j w_j \mu_j`.

        Args:
            fit: From :meth:`fit`, batch `b`.
            query_X: `b x q x d` (`b` broadcastable with the fit's batch).

        Returns:
            `b x q x q` correlation matrices (float64).
        """
        mu, cov = self.particle_joints(fit, query_X, observation_noise)
        w = fit.log_weights.exp()  # `b x J`
        m = (w.unsqueeze(-1) * mu).sum(1)  # `b x q`
        second = (w[..., None, None] * (cov + mu.unsqueeze(-1) * mu.unsqueeze(-2))).sum(1)
        C = second - m.unsqueeze(-1) * m.unsqueeze(-2)
        sd = C.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
        return C / (sd.unsqueeze(-1) * sd.unsqueeze(-2))

    def particle_joints(
        self, fit: GPFit, query_X: Tensor, observation_noise: bool = True
    ) -> tuple[Tensor, Tensor]:
        r"""Each particle's joint Gaussian predictive at `q` points: of noisy targets,
        or without `observation_noise` of the latent function (then with the jitter
        ``GP_JITTER`` x outputscale on the diagonal, which keeps the covariance of
        near-duplicate points positive definite under round-off).

        Args:
            fit: From :meth:`fit`, batch `b`.
            query_X: `b x q x d` (`b` broadcastable with the fit's batch).

        Returns:
            `(mu, cov)`: `b x J x q` means and `b x J x q x q` covariances (float64).
        """
        with torch.autocast(query_X.device.type, enabled=False):
            X = query_X.to(torch.float64)
            Zq, mu, v = self._conditioned(fit, X)  # `b x J x q x d`, `b x J x q`, ...
            os = fit.outputscale[..., None, None]
            kqq = unit_kernel(_sqdist(Zq, Zq), fit.matern, fit.matern_count) * os  # `b x J x q x q`
            q = X.shape[-2]
            eye = torch.eye(q, dtype=X.dtype, device=X.device)
            cov = kqq - v.transpose(-1, -2) @ v
            if observation_noise:
                cov = cov + fit.noise[..., None, None] * eye
            else:  # round-off keeps a latent covariance of near-duplicates PSD
                cov = cov + (GP_JITTER * fit.outputscale)[..., None, None] * eye
            return mu, cov

    def log_probs(
        self, h: Tensor, fit: GPFit, query_X: Tensor, borders: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""The GP mixture on the buckets, and its mixing logit in the output.

        Args:
            h: `b x m x e` final test-token states.
            fit: From :meth:`fit`, batch `b`.
            query_X: `b x m x d`.
            borders: `K + 1` bucket borders (standardised).

        Returns:
            `(log_q, omega)`: `b x m x K` log bucket probabilities (float64) and the
            `b x m` mixing logits (float64).
        """
        mu, var = self.predict(fit, query_X)  # `b x J x m`
        with torch.autocast(h.device.type, enabled=False):
            log_q = self._bucket_log_probs(mu, var, fit, borders)
            omega = self._omega(h, mu, var, fit)
        return log_q, omega

    def mixture_log_probs(
        self, fit: GPFit, query_X: Tensor, borders: Tensor, observation_noise: bool = True
    ) -> Tensor:
        r"""The GP mixture on the buckets alone (no test-token states needed).

        Args:
            fit: From :meth:`fit`, batch `b`.
            query_X: `b x m x d`.
            borders: `K + 1` bucket borders (standardised).
            observation_noise: The mixture of noisy targets (True) or of the latent
                function.

        Returns:
            `b x m x K` log bucket probabilities (float64).
        """
        mu, var = self.predict(fit, query_X, observation_noise)  # `b x J x m`
        with torch.autocast(query_X.device.type, enabled=False):
            return self._bucket_log_probs(mu, var, fit, borders)

    @staticmethod
    def _bucket_log_probs(mu: Tensor, var: Tensor, fit: GPFit, borders: Tensor) -> Tensor:
        r"""`b x m x K` log-probabilities of the particles' mixture on the buckets."""
        q = gaussian_bucket_probs(mu, var.sqrt(), borders.to(torch.float64))  # `b x J x m x K`
        # mixed over the particles in probability space: one log per bucket, not J
        w = fit.log_weights.exp()[..., None, None]  # `b x J x 1 x 1`
        return _floored_log((w * q).sum(1))  # `b x m x K`

    def nll_at(
        self, h: Tensor, fit: GPFit, query_X: Tensor, borders: Tensor, log_p_bar: Tensor,
        idx: Tensor,
    ) -> Tensor:
        r"""Bar NLL terms of the output with the GP mixture mixed in, from the target
        buckets alone (the training path: no `K`-sized GP tensors).

        Equals `-log p_i` of :meth:`mix_into`'s output renormalised over the buckets
        (as :func:`~botorch_community.pfn.bar_distribution.bar_nll` does), for the
        target bucket `i` of each test point; the GP mass beyond the outer borders is
        dropped there, so the renormaliser is `(1 - w) + w sum_j pi_j P_j(inside)`.

        Args:
            h: `b x m x e` final test-token states.
            fit: From :meth:`fit`, batch `b`.
            query_X: `b x m x d`.
            borders: `K + 1` bucket borders.
            log_p_bar: `b x m` log-probabilities of the target buckets under the bar
                part (renormalised).
            idx: `b x m` target bucket indices.

        Returns:
            `b x m` values `-log p_i` (float64; add `log` of the bucket width for the NLL).
        """
        mu, var = self.predict(fit, query_X)  # `b x J x m`
        with torch.autocast(h.device.type, enabled=False):
            f64 = torch.float64
            b64 = borders.to(f64)
            sd = var.sqrt()
            pair = torch.stack([b64[idx], b64[idx + 1]], dim=-1).unsqueeze(1)  # `b x 1 x m x 2`
            w = fit.log_weights.exp().unsqueeze(-1)  # `b x J x 1`
            q_i = gaussian_bucket_probs(mu, sd, pair).squeeze(-1)  # `b x J x m`
            q_in = gaussian_bucket_probs(mu, sd, b64[[0, -1]]).squeeze(-1)  # `b x J x m`
            log_qi = _floored_log((w * q_i).sum(1))  # `b x m`
            log_in = _floored_log((w * q_in).sum(1))
            omega = self._omega(h, mu, var, fit)
            log_p = mix_log_probs(log_p_bar.to(f64), log_qi, omega)
            log_total = mix_log_probs(torch.zeros_like(log_in), log_in, omega)
        return log_total - log_p

    def _omega(self, h: Tensor, mu: Tensor, var: Tensor, fit: GPFit) -> Tensor:
        r"""`b x m` mixing logits from the test tokens and the mixture's log std."""
        w = fit.log_weights.exp().unsqueeze(-1)  # `b x J x 1`
        m1 = (w * mu).sum(1)
        m2 = (w * (var + mu.square())).sum(1)
        log_sd = 0.5 * (m2 - m1.square()).clamp_min(1e-12).log()  # `b x m`
        z = self.mix_norm(h.to(self.mix_norm.weight.dtype))
        feats = torch.cat([z, log_sd.unsqueeze(-1).to(z.dtype)], dim=-1)
        return self.mix(feats).squeeze(-1).to(torch.float64)

    @staticmethod
    def mix_into(logits: Tensor, log_q: Tensor, omega: Tensor) -> Tensor:
        r"""`(1 - w) softmax(logits) + w q` as log-probabilities, `w = sigmoid(omega)`
        (in the dtype of `logits`, at least float32)."""
        with torch.autocast(logits.device.type, enabled=False):
            log_p = torch.log_softmax(logits.to(torch.float64), -1)
            out = mix_log_probs(log_p, log_q, omega.unsqueeze(-1))
        return out.to(torch.promote_types(logits.dtype, torch.float32))


class CellGPHead(GPHead):
    r"""The GP head of a network with one token per input dimension
    (:class:`~botorch_community.pfn.cell_transformer.PFNCellTransformer`).

    The particles' log lengthscale of dimension `i` is read from the final state of
    the context row's cell `i`, the outputscale, noise and weight logit from its target
    cell: one map for every dimension, so the head serves any `d`.
    """

    def __init__(self, emsize: int, particles: int = 4, init_logit: float = -2.0) -> None:
        r"""
        Args:
            emsize: Token embedding size.
            particles: `J`, the number of hyperparameter particles.
            init_logit: Initial logit of the GP mixture's weight in the output.
        """
        super().__init__(emsize, 0, particles, init_logit)  # no fixed number of inputs

    def _init_proposal(self, emsize: int) -> None:
        r"""One map for every input cell, one for the target cell (zero maps plus
        spread biases, as for the row network's head)."""
        J = self.particles
        self.feature_hyper = nn.Linear(emsize, J)  # log lengthscale of each particle
        self.target_hyper = nn.Linear(emsize, 3 * J)  # log outputscale, log noise, logit
        for lin in (self.feature_hyper, self.target_hyper):
            nn.init.zeros_(lin.weight)
        with torch.no_grad():
            self.feature_hyper.bias.copy_(torch.linspace(-2.0, 0.0, J))
            bias = self.target_hyper.bias.view(3, J)
            bias[0] = 0.0
            bias[1] = torch.linspace(-10.0, -2.0, J)
            bias[2] = 0.0

    def propose(self, token: Tensor, d: int) -> tuple[Tensor, Tensor]:
        r"""The network's particles from the context row's cells.

        Args:
            token: `b x (d + 1) x e` final states of the context row's cells (its `d`
                input cells, then its target cell).
            d: The input dimension.

        Returns:
            As :meth:`GPHead.propose`: `b x J x (d + 2)` and `b x J` (float64).
        """
        if token.shape[-2] != d + 1:
            raise ValueError(
                f"CellGPHead needs the context row's d + 1 = {d + 1} cells, got "
                f"{token.shape[-2]}."
            )
        z = self.norm(token.to(self.norm.weight.dtype))
        log_ls = self.feature_hyper(z[..., :d, :]).transpose(-1, -2)  # `b x J x d`
        rest = self.target_hyper(z[..., d, :]).unflatten(-1, (3, self.particles))  # `b x 3 x J`
        theta = torch.cat([log_ls, rest[..., :2, :].transpose(-1, -2)], dim=-1)
        return theta.to(torch.float64), rest[..., 2, :].to(torch.float64)
