#!/usr/bin/env python3
r"""A bar posterior that knows the continuous Gaussian mixture it discretises.

The GP head of a PFN predicts, at every candidate, a mixture of Gaussians on the
network's latent target axis :math:`t`, and the outcome is an increasing map of it:

.. math::

    y = h(t), \qquad t \sim \sum_{j=1}^{J} w_j \, \mathcal{N}(\mu_j, \sigma_j^2),

with :math:`h` affine (the context's standardisation) or the inverse of a sinh-arcsinh
warp (see :class:`~botorch_community.pfn.target_map.TargetMap`).
:class:`GaussianMixtureRiemannPosterior` is a
:class:`~botorch_community.posteriors.riemann.BoundedRiemannPosterior` (its buckets are
the mixture discretised on given borders, computed only when something asks for them:
samples, quantiles, the cdf) that also evaluates expected improvement, its log and the
probability of improvement on the mixture itself, with ``J`` terms per candidate instead
of a sum over buckets:

* :math:`h` affine, :math:`h(t) = \kappa t + \lambda`:
  :math:`\mathrm{EI} = \sum_j w_j \kappa \sigma_j H(-u_j)`, with
  :math:`u_j = (h^{-1}(f^*) - \mu_j) / \sigma_j` and :math:`H(z) = \phi(z) + z \Phi(z)`
  (the log via BoTorch's stable ``_log_ei_helper``).
* :math:`h` nonlinear: :math:`\mathrm{EI}_j = \int_{u_j}^\infty (h(\mu_j + \sigma_j u) -
  f^*) \phi(u) du` by Gauss-Legendre quadrature on the window where the integrand
  matters, in log space (see :func:`_log_ei_warped`).
* :math:`\mathrm{PI} = \sum_j w_j \Phi(-u_j)` for any increasing :math:`h`.

The moments are the mixture's (closed form, or the same quadrature for a nonlinear :math:`h`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
from botorch.acquisition.analytic import _log_ei_helper
from torch import Tensor

from botorch_community.pfn.bar_distribution import gaussian_bucket_probs
from botorch_community.posteriors.riemann import BoundedRiemannPosterior

#: Gauss-Legendre nodes per panel of the integrals under a nonlinear outcome map (the
#: panels split at the map's kinks, so each integrand is smooth).
NUM_LEGENDRE_NODES = 16
#: The quadrature window `[u, u + W]` of an improvement integral ends where the
#: integrand's Gaussian factor `exp(-u s - s^2 / 2)` falls below `exp(-WINDOW_LOG_DECAY)`.
WINDOW_LOG_DECAY = 35.0
#: The fractional part of the golden ratio: offsets the strata of independent points.
_GOLDEN = 0.6180339887498949
#: Stratified uniforms per (number of draws, device, dtype): a fixed permutation of the
#: strata, so an MC acquisition's draws pick the same components at every call.
_STRATA: dict = {}


def _stratified_uniforms(S: int, like: Tensor) -> Tensor:
    r"""`S` uniforms :math:`(\pi(s) + 1/2) / S` for a fixed permutation :math:`\pi`
    (cached, so a call under CUDA-graph capture copies nothing to the device)."""
    key = (S, like.device, like.dtype)
    u = _STRATA.get(key)
    if u is None:
        perm = torch.randperm(S, generator=torch.Generator().manual_seed(0))
        u = ((perm.to(torch.float64) + 0.5) / S).to(device=like.device, dtype=like.dtype)
        if len(_STRATA) > 64:
            _STRATA.clear()
        _STRATA[key] = u
    return u


def _psd_cholesky(C: Tensor) -> Tensor:
    r"""Cholesky factors of covariances `C` (`... x q x q`), with a relative jitter
    of 1e-10, 1e-8, ... of the mean diagonal added where a factor fails."""
    L, info = torch.linalg.cholesky_ex(C)
    if not bool((info > 0).any()):
        return L
    scale = C.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)  # `...`
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    for rel in (1e-10, 1e-8, 1e-6, 1e-4):
        bad = (info > 0).to(C.dtype) * rel * scale
        L2, info2 = torch.linalg.cholesky_ex(C + bad[..., None, None] * eye)
        L = torch.where((info > 0)[..., None, None], L2, L)
        info = torch.where(info > 0, info2, info)
        if not bool((info > 0).any()):
            return L
    raise ValueError("A component's covariance over the q points is not positive definite.")


#: Bucket probabilities are floored here before renormalising (a softmax of floored
#: log-probabilities, as the network's bucket outputs are).
PROBABILITY_FLOOR = 1e-30


class IncreasingOutcomeMap:
    r"""An increasing map :math:`h(t) = a \, g(s t) + c` from latent `t` to outcomes.

    `g` is an increasing base map (e.g. a context's ``TargetMap.inverse``) with its
    inverse, `s` is +1 or -1 and :math:`a s > 0`, so `h` increases. Affine maps of the
    outcome compose into `(a, c)`; a negative one also flips `s` (and the mixture's
    components are then mirrored, see :meth:`GaussianMixtureRiemannPosterior.affine`).
    """

    def __init__(
        self,
        base: Callable[[Tensor], Tensor],
        base_inverse: Callable[[Tensor], Tensor],
        base_affine: Optional[tuple[Tensor, Tensor]] = None,
        base_knots: Optional[Tensor] = None,
        sign: float = 1.0,
        scale: float | Tensor = 1.0,
        shift: float | Tensor = 0.0,
    ) -> None:
        r"""Args:
        base: The increasing base map `g` (elementwise).
        base_inverse: Its inverse.
        base_affine: `(alpha, beta)` if `g(t) = alpha t + beta` (alpha > 0), else None.
        base_knots: 1-dim points where `g` is only C^1 (quadrature panels split there).
        sign, scale, shift: `s`, `a`, `c` (`a * s > 0`).
        """
        if not float(scale) * sign > 0:
            raise ValueError("An IncreasingOutcomeMap needs scale * sign > 0.")
        self.base, self.base_inverse, self.base_affine = base, base_inverse, base_affine
        self.base_knots = base_knots
        self.sign, self.scale, self.shift = sign, scale, shift

    def __call__(self, t: Tensor) -> Tensor:
        r"""Outcomes `h(t)`."""
        return self.scale * self.base(self.sign * t) + self.shift

    def inverse(self, y: Tensor) -> Tensor:
        r"""Latent values `h^{-1}(y)`."""
        return self.sign * self.base_inverse((y - self.shift) / self.scale)

    @property
    def affine(self) -> Optional[tuple[Tensor | float, Tensor | float]]:
        r"""`(kappa, lambda)` with `h(t) = kappa t + lambda` (kappa > 0), or None."""
        if self.base_affine is None:
            return None
        alpha, beta = self.base_affine
        return self.scale * alpha * self.sign, self.scale * beta + self.shift

    @property
    def latent_knots(self) -> Optional[Tensor]:
        r"""The 1-dim latent points where `h` is only C^1 (None: smooth)."""
        return None if self.base_knots is None else self.sign * self.base_knots

    def then_affine(self, scale: float | Tensor, shift: float | Tensor) -> "IncreasingOutcomeMap":
        r"""The map of `scale * h(s' t) + shift`, `s' = sign(scale)`: increasing again."""
        sign = self.sign * (1.0 if scale > 0 else -1.0)
        return IncreasingOutcomeMap(
            self.base, self.base_inverse, self.base_affine, self.base_knots, sign,
            scale * self.scale, scale * self.shift + shift,
        )  # fmt: skip


class GaussianMixtureRiemannPosterior(BoundedRiemannPosterior):
    r"""Bar marginals of :math:`y = h(t)`, :math:`t` a Gaussian mixture per point.

    Shapes: ``means`` and ``stds`` are ``batch_shape x q x J``, ``log_weights``
    broadcasts to them; the bucket ``probabilities`` (``batch_shape x q x B``) are
    computed on first use.

    Samples are exact draws of the mixture, not of its buckets: each draw picks a
    component by its weight, then :math:`t = \mu_j + \sigma_j z` from the base sample
    `z`, and :math:`y = h(t)`. With ``covariances`` (each component's joint Gaussian
    over the `q` points, as the GP head's particles have) the `q` points are joint: one
    component per draw and :math:`t = \mu_j + L_j z` with :math:`L_j L_j^T = \Sigma_j`,
    so two copies of a point get the same value, as in a GP's joint posterior. The
    component of draw `s` comes from a fixed stratified assignment (draw `s` takes the
    component whose cumulative weight interval holds :math:`(\pi(s) + 1/2) / S`, for
    a fixed permutation :math:`\pi` of the `S` draws), so fixed base samples give a
    deterministic, differentiable function of the means and covariances, as MC
    acquisitions need.
    """

    def __init__(
        self,
        means: Tensor,
        stds: Tensor,
        log_weights: Tensor,
        latent_borders: Tensor,
        outcome_map: IncreasingOutcomeMap,
        covariances: Optional[Tensor] = None,
    ) -> None:
        r"""Gaussian-mixture Riemann posterior.

        Args:
            means: ``batch_shape x q x J`` component means (latent axis).
            stds: ``batch_shape x q x J`` positive component standard deviations.
            log_weights: Normalised component log-weights, broadcastable to
                ``batch_shape x q x J``.
            latent_borders: ``B + 1`` increasing bucket borders on the latent axis (the
                bar view's resolution).
            outcome_map: The increasing map `h` from the latent axis to outcomes.
            covariances: Optional ``batch_shape x J x q x q`` joint covariances of the
                components over the `q` points (latent axis; their diagonals are
                ``stds ** 2``); the log-weights must then be equal along `q`.
        """
        if means.shape != stds.shape or means.dim() < 2:
            raise ValueError(
                "`means` and `stds` must both be `batch_shape x q x J`, got shapes "
                f"{tuple(means.shape)} and {tuple(stds.shape)}."
            )
        if covariances is not None:
            q, J = means.shape[-2:]
            if covariances.shape != means.shape[:-2] + (J, q, q):
                raise ValueError(
                    "`covariances` must be `batch_shape x J x q x q` = "
                    f"{tuple(means.shape[:-2] + (J, q, q))}, got {tuple(covariances.shape)}."
                )
            covariances = covariances.to(means)
        self.means, self.stds = means, stds
        self.log_weights = log_weights.to(means).expand_as(means)
        self.latent_borders = latent_borders.to(means)
        self.outcome_map = outcome_map
        self.covariances = covariances
        self._borders: Optional[Tensor] = None
        self._probabilities: Optional[Tensor] = None
        self._chol: Optional[Tensor] = None

    # ------------------------------------------------------------ the bar view
    @property
    def borders(self) -> Tensor:
        r"""The ``B + 1`` bucket borders in outcome units, `h(latent_borders)` (computed
        and checked on first use: the improvement integrals do not need them)."""
        if self._borders is None:
            borders = self.outcome_map(self.latent_borders)
            with torch.no_grad():
                ok = torch.isfinite(borders).all() and (borders[1:] > borders[:-1]).all()
            if not ok:
                raise ValueError(
                    "The outcome map must take the latent borders to finite, strictly "
                    f"increasing borders (in {self.means.dtype})."
                )
            self._borders = borders
        return self._borders
    @property
    def probabilities(self) -> Tensor:
        r"""``batch_shape x q x B`` bucket probabilities of the mixture (cached)."""
        if self._probabilities is None:
            q = gaussian_bucket_probs(self.means, self.stds, self.latent_borders)  # `... x J x B`
            mixed = (self.log_weights.exp().unsqueeze(-1) * q).sum(-2)
            mixed = mixed.clamp_min(PROBABILITY_FLOOR)
            self._probabilities = mixed / mixed.sum(-1, keepdim=True)
        return self._probabilities

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def base_sample_shape(self) -> torch.Size:
        return self.means.shape[:-1] + torch.Size([1])

    def _extended_shape(self, sample_shape: torch.Size = torch.Size()) -> torch.Size:  # noqa: B008
        return torch.Size(sample_shape) + self.means.shape[:-1] + (1,)

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    # ----------------------------------------------------------------- sampling
    @property
    def _point_shape(self) -> torch.Size:
        r"""``batch x q``, from the means: sampling needs no bucket probabilities."""
        return self.means.shape[:-1]

    def rsample_from_base_samples(self, sample_shape: torch.Size, base_samples: Tensor) -> Tensor:
        r"""Exact draws of the mixture (see the class docstring) from ``N(0, 1)`` base
        samples of shape ``sample_shape x batch_shape x q x 1``.

        Returns:
            ``sample_shape x batch_shape x q x 1`` samples, differentiable in the
            means, standard deviations / covariances and the outcome map.
        """
        sample_shape = torch.Size(sample_shape)
        z = self._normals_to_points(sample_shape, base_samples).to(self.means)
        S = max(sample_shape.numel(), 1)
        batch, (q, J) = self.means.shape[:-2], self.means.shape[-2:]
        z = z.reshape(S, *batch, q)
        u = _stratified_uniforms(S, self.means)  # `S`
        if self.covariances is not None:  # one component per draw, joint over the q points
            if self._chol is None:
                self._chol = _psd_cholesky(self.covariances)  # `batch x J x q x q`
            # `S x batch x J x q`; as an einsum over the batch (one matmul of the `J q x q`
            # factors with the `q x S` normals per batch element), not `S x batch x J`
            # broadcast matmuls of `q x q` by `q x 1`, which cost 10x more
            Lz = torch.einsum("...jqk,s...k->s...jq", self._chol, z)
            t_all = self.means.transpose(-1, -2) + Lz
            cw = self.log_weights[..., 0, :].exp().cumsum(-1)  # `batch x J`
            cw = cw.expand(S, *batch, J).contiguous()
            uu = u.view(S, *([1] * len(batch)), 1).expand(S, *batch, 1).contiguous()
            j = torch.searchsorted(cw, uu).clamp_max(J - 1)  # `S x batch x 1`
            t = t_all.gather(-2, j.unsqueeze(-1).expand(S, *batch, 1, q)).squeeze(-2)
        else:  # independent points: each its own component, strata offset per point
            t_all = self.means + self.stds * z.unsqueeze(-1)  # `S x batch x q x J`
            shift = torch.arange(q, dtype=u.dtype, device=u.device) * _GOLDEN
            uq = torch.remainder(u.unsqueeze(-1) + shift, 1.0)  # `S x q`
            uq = uq.view(S, *([1] * len(batch)), q, 1).expand(S, *batch, q, 1).contiguous()
            cw = self.log_weights.exp().cumsum(-1).expand(S, *batch, q, J).contiguous()
            j = torch.searchsorted(cw, uq).clamp_max(J - 1)  # `S x batch x q x 1`
            t = t_all.gather(-1, j).squeeze(-1)
        y = self.outcome_map(t)
        return y.reshape(*sample_shape, *batch, q, 1)

    @property
    def correlation_matrix(self) -> Tensor:
        r"""``batch_shape x q x q`` correlation of the latent mixture over the `q`
        points (needs ``covariances``): :math:`\sum_j w_j (\Sigma_j + \mu_j \mu_j^T)
        - m m^T`, normalised."""
        if self.covariances is None:
            raise AttributeError("This posterior's points are independent (no covariances).")
        w = self.log_weights[..., 0, :].exp()  # `batch x J`
        mu = self.means.transpose(-1, -2)  # `batch x J x q`
        m = (w.unsqueeze(-1) * mu).sum(-2)
        second = (w[..., None, None] * (self.covariances + mu.unsqueeze(-1) * mu.unsqueeze(-2))).sum(-3)
        C = second - m.unsqueeze(-1) * m.unsqueeze(-2)
        sd = C.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
        return C / (sd.unsqueeze(-1) * sd.unsqueeze(-2))

    # ----------------------------------------------------------------- moments
    def _moment_rule(self) -> tuple[Tensor, Tensor]:
        r"""`(h(mu + sd v_k), w_j omega_k)`, each ``batch_shape x q x J x K``: the normal
        expectation rule of :func:`_normal_rule` on `[-sqrt(70), sqrt(70)]`."""
        mu, sd = self.means.unsqueeze(-1), self.stds.unsqueeze(-1)
        knots = self.outcome_map.latent_knots
        knots = mu.new_zeros(0) if knots is None else knots.to(mu)
        lo = torch.full_like(mu, -math.sqrt(2 * WINDOW_LOG_DECAY))
        v, w = _normal_rule(mu, sd, knots, lo)
        return self.outcome_map(mu + sd * v), self.log_weights.exp().unsqueeze(-1) * w

    @property
    def mean(self) -> Tensor:
        r"""The ``batch_shape x q x 1`` mean of the mixture (not of its buckets)."""
        w = self.log_weights.exp()
        aff = self.outcome_map.affine
        if aff is not None:
            return (aff[0] * (w * self.means).sum(-1) + aff[1]).unsqueeze(-1)
        y, wk = self._moment_rule()
        return (wk * y).sum((-1, -2)).unsqueeze(-1)

    @property
    def variance(self) -> Tensor:
        r"""The ``batch_shape x q x 1`` variance of the mixture."""
        w = self.log_weights.exp()
        aff = self.outcome_map.affine
        if aff is not None:
            m = (w * self.means).sum(-1, keepdim=True)
            var = (w * (self.stds.square() + (self.means - m).square())).sum(-1)
            return (aff[0] ** 2 * var).unsqueeze(-1)
        y, wk = self._moment_rule()
        m = (wk * y).sum((-1, -2))[..., None, None]
        return (wk * (y - m).square()).sum((-1, -2)).unsqueeze(-1)

    # ------------------------------------------------------------ affine maps
    def affine(self, scale: float | Tensor, shift: float | Tensor = 0.0) -> BoundedRiemannPosterior:
        r"""The posterior of ``scale * Y + shift``: the same mixture (mirrored for a
        negative `scale`) under the composed outcome map."""
        if torch.is_tensor(scale):
            scale = scale.reshape(()).to(self.means)
        if torch.is_tensor(shift):
            shift = shift.reshape(()).to(self.means)
        if scale == 0:
            raise ValueError("A zero `scale` makes the posterior degenerate.")
        if not torch.is_tensor(scale) and not torch.is_tensor(shift):
            if scale == 1.0 and shift == 0.0:
                return self
        mirror = bool(scale < 0)
        out = GaussianMixtureRiemannPosterior(
            -self.means if mirror else self.means,
            self.stds,
            self.log_weights,
            (-self.latent_borders).flip(0) if mirror else self.latent_borders,
            self.outcome_map.then_affine(scale, shift),
            covariances=self.covariances,  # (the covariance of -t is that of t)
        )
        if self._probabilities is not None:
            out._probabilities = self._probabilities.flip(-1) if mirror else self._probabilities
        if self._borders is not None:
            borders = self._borders * scale + shift
            out._borders = borders.flip(0) if mirror else borders
        return out

    # --------------------------------------------------- improvement integrals
    def _standardized_threshold(self, best_f: Tensor) -> tuple[Tensor, Tensor]:
        r"""`(t*, u)`: the threshold on the latent axis and `u_j = (t* - mu_j) / sd_j`."""
        t_star = self.outcome_map.inverse(best_f.to(self.means))
        return t_star, (t_star - self.means) / self.stds

    def log_expected_improvement(self, best_f: Tensor) -> Tensor:
        r"""``batch_shape x q`` values :math:`\log E[\max(Y - f^*, 0)]`, finite also
        where EI underflows."""
        t_star, u = self._standardized_threshold(best_f)
        aff = self.outcome_map.affine
        if aff is not None:
            # (a float scale stays on the host: no copy to the device per call)
            log_kappa = aff[0].to(self.means).log() if torch.is_tensor(aff[0]) else math.log(aff[0])
            log_ei = log_kappa + self.stds.log() + _log_ei_helper(-u)  # `... x J`
        else:
            log_ei = _log_ei_warped(self.outcome_map, self.means, self.stds, u, t_star)
        return torch.logsumexp(self.log_weights + log_ei, dim=-1)

    def expected_improvement(self, best_f: Tensor) -> Tensor:
        r"""``batch_shape x q`` values :math:`E[\max(Y - f^*, 0)]`."""
        return self.log_expected_improvement(best_f).exp()

    def probability_of_improvement(self, best_f: Tensor) -> Tensor:
        r"""``batch_shape x q`` values :math:`P(Y > f^*) = \sum_j w_j \Phi(-u_j)`."""
        _, u = self._standardized_threshold(best_f)
        return (self.log_weights.exp() * torch.special.ndtr(-u)).sum(-1)


def _log_ei_warped(
    h: IncreasingOutcomeMap, mu: Tensor, sd: Tensor, u: Tensor, t_star: Tensor
) -> Tensor:
    r"""Per-component :math:`\log \int_{u}^\infty (h(\mu + \sigma v) - h(t^*)) \phi(v) dv`.

    With :math:`g(t) = h(t) - h(t^*)` (differences of one function: no cancellation
    against a large :math:`f^*`), by Gauss-Legendre on panels split at the kinks of
    `h` (:attr:`IncreasingOutcomeMap.latent_knots`), so each panel's integrand is
    smooth:

    * :math:`u \ge 0`: substituting :math:`v = u + s`, the integral is
      :math:`\phi(u) \int_0^W g(t^* + \sigma s) e^{-u s - s^2/2} ds`, with the window
      :math:`W = \sqrt{u^2 + 70} - u` ending where the Gaussian factor falls below
      :math:`e^{-35}` (about 8 at u = 0, 1/u for large u); summed in log space, so EI
      far below round-off keeps its log.
    * :math:`u < 0`: the component's bulk improves; :math:`v` runs over
      :math:`[\max(u, -\sqrt{70}), \sqrt{70}]`, also split at -3, 0 and 3 (EI is not
      small here: linear space).

    On the CPU each entry runs only its own branch; elsewhere both run (no host sync).

    Args:
        h: The outcome map.
        mu, sd, u: ``... x J`` component means, stds and standardised thresholds.
        t_star: The 0-dim latent threshold.

    Returns:
        ``... x J`` log-EI per component.
    """
    f_star = h(t_star)
    knots = h.latent_knots
    knots = mu.new_zeros(0) if knots is None else knots.to(mu)
    shape = u.shape
    mu, sd, u = mu.reshape(-1, 1), sd.reshape(-1, 1), u.reshape(-1, 1)  # `N x 1`
    above = u >= 0
    zero = torch.zeros_like(u)
    if mu.device.type not in _BRANCH_BY_INDEX_DEVICES:  # both branches: no host sync
        log_a = _log_ei_upper_tail(h, f_star, knots, mu, sd, torch.where(above, u, zero))
        log_b = _log_ei_bulk(h, f_star, knots, mu, sd, torch.where(above, zero, u))
        return torch.where(above, log_a, log_b).reshape(shape)
    out = zero.squeeze(-1)
    ia, ib = above.squeeze(-1).nonzero().squeeze(-1), (~above).squeeze(-1).nonzero().squeeze(-1)
    if ia.numel():
        out = out.index_put((ia,), _log_ei_upper_tail(h, f_star, knots, mu[ia], sd[ia], u[ia]).squeeze(-1))
    if ib.numel():
        out = out.index_put((ib,), _log_ei_bulk(h, f_star, knots, mu[ib], sd[ib], u[ib]).squeeze(-1))
    return out.reshape(shape)


def _log_ei_upper_tail(
    h: IncreasingOutcomeMap, f_star: Tensor, knots: Tensor, mu: Tensor, sd: Tensor, u: Tensor
) -> Tensor:
    r"""`N x 1` log-EI of components with `u >= 0` (`N x 1` inputs; see
    :func:`_log_ei_warped`)."""
    L = math.sqrt(2 * WINDOW_LOG_DECAY)
    W = torch.sqrt(u.square() + L**2) - u
    kn = ((knots - mu) / sd - u).clamp(min=0).minimum(W)  # `N x knots`
    edges = torch.cat([torch.zeros_like(W), kn, W], -1).sort(-1).values
    s, w = _panel_rule(edges, NUM_LEGENDRE_NODES)  # `N x P k`
    g = h(mu + sd * (u + s)) - f_star
    ok = (g > 0) & (w > 0)
    safe = lambda t: torch.where(ok, t, torch.ones_like(t))  # noqa: E731
    terms = safe(g).log() + safe(w).log() - u * s - s.square() / 2
    terms = torch.where(ok, terms, torch.full_like(terms, -math.inf))
    return torch.logsumexp(terms, -1, keepdim=True) - u.square() / 2 - 0.5 * math.log(2 * math.pi)


def _log_ei_bulk(
    h: IncreasingOutcomeMap, f_star: Tensor, knots: Tensor, mu: Tensor, sd: Tensor, u: Tensor
) -> Tensor:
    r"""`N x 1` log-EI of components with `u < 0` (`N x 1` inputs; see
    :func:`_log_ei_warped`)."""
    v, w = _normal_rule(mu, sd, knots, u.clamp_min(-math.sqrt(2 * WINDOW_LOG_DECAY)))
    ei = (w * (h(mu + sd * v) - f_star)).sum(-1, keepdim=True)
    return ei.clamp_min(torch.finfo(mu.dtype).tiny).log()


def _normal_rule(mu: Tensor, sd: Tensor, knots: Tensor, lo: Tensor) -> tuple[Tensor, Tensor]:
    r"""Nodes `v_k` and weights `omega_k phi(v_k)` of :math:`\int_{lo}^{L} f(v) \phi(v) dv`,
    `L = sqrt(70)` (the normal density is below `exp(-35)` beyond): Gauss-Legendre on
    panels split at -3, 0, 3 and at the kinks of the outcome map (`knots`, latent axis;
    in each component's units `(knots - mu) / sd`).

    Args:
        mu, sd: ``... x 1`` component means and standard deviations.
        knots: 1-dim latent kinks (may be empty).
        lo: ``... x 1`` lower ends, at least `-L`.

    Returns:
        Two ``... x K`` tensors.
    """
    L = math.sqrt(2 * WINDOW_LOG_DECAY)
    kn = ((knots - mu) / sd).maximum(lo).clamp_max(L)
    splits = _on_device(_BULK_SPLITS, lo).expand(*lo.shape[:-1], -1).maximum(lo)
    edges = torch.cat([lo, splits, kn, torch.full_like(lo, L)], -1).sort(-1).values
    v, w = _panel_rule(edges, NUM_LEGENDRE_NODES)
    return v, w * torch.exp(-v.square() / 2) / math.sqrt(2 * math.pi)


def _panel_rule(edges: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""Gauss-Legendre nodes and weights, `k` per panel, on the consecutive panels of
    increasing `edges` (``... x (P + 1)``); returns two ``... x (P k)`` tensors (empty
    panels get zero weights)."""
    x, omega = _legendre_rule(k, edges)
    a, b = edges[..., :-1, None], edges[..., 1:, None]  # `... x P x 1`
    return (a + (b - a) * x).flatten(-2), ((b - a) * omega).flatten(-2)


#: Devices on which each component runs only its own branch of the improvement integral
#: (index selection costs a host sync, cheap on the CPU); elsewhere both run.
_BRANCH_BY_INDEX_DEVICES = ("cpu",)
#: Interior panel edges (standard units) of integrals over a Gaussian's bulk.
_BULK_SPLITS = torch.tensor([-3.0, 0.0, 3.0])

_RULES: dict[tuple, tuple[Tensor, Tensor]] = {}


def _on_device(constant: Tensor, like: Tensor) -> Tensor:
    r"""A module constant in `like`'s dtype and device, copied there once (a copy per
    call would also break CUDA graph capture)."""
    key = ("constant", id(constant), like.dtype, like.device)
    if key not in _RULES:
        _RULES[key] = (constant.to(like), constant)  # holds `constant`: its id stays valid
    return _RULES[key][0]


def _legendre_rule(k: int, like: Tensor) -> tuple[Tensor, Tensor]:
    r"""`k` Gauss-Legendre nodes and weights on `[0, 1]`, in `like`'s dtype/device."""
    key = ("legendre", k, like.dtype, like.device)
    if key not in _RULES:
        x, w = np.polynomial.legendre.leggauss(k)
        _RULES[key] = (torch.as_tensor((x + 1) / 2).to(like), torch.as_tensor(w / 2).to(like))
    return _RULES[key]
