#!/usr/bin/env python3
r"""The monotone map from a user's targets to the network's standardised target space.

The network reads targets standardised by the mean and standard deviation of its context
(:func:`~botorch_community.pfn.standardize.context_moments`), and its bar distribution
is dense on about `[-3.5, 3.5]` of that scale, with one wide bucket on each side. BO
contexts are skewed: the incumbent (and the optimum) often lie 4 to 20 standard
deviations above the mean of the context, where an affine standardisation leaves them in
a wide outer bucket and the predictive at the incumbent is wrong by standard deviations.

A :class:`TargetMap` therefore adds a monotone warp fitted to the context's targets,

.. math::
    t(y) = \frac{\psi_{\epsilon,\delta}(z) - m_w}{s_w},\quad
    z = \frac{y - m}{s},\quad
    \psi_{\epsilon,\delta}(z) = \sinh\big(\delta \operatorname{asinh}(z) - \epsilon\big),

a sinh-arcsinh transform (Jones & Pewsey, 2009): `delta < 1` pulls in heavy tails,
`epsilon` removes skew, and `(m_w, s_w)` re-standardise the warped context. Outside the
range of the context's `z` the warp continues along its tangent at the extreme (a C1,
linear continuation): beyond the data nothing tells how the tails should bend, and the
sinh's exponential growth would stretch the network's outer buckets (and so the
predictive's tails, and EI) over hundreds of standard deviations. `(epsilon,
delta)` maximise the Gaussian likelihood of the warped context (with the Jacobian), and
the identity is kept unless the warp gains at least :data:`MIN_LOG_LIK_GAIN` nats, so
Gaussian-looking contexts are only standardised. The inverse is defined on the whole real
line, so every bucket border of the network maps to a finite, increasing user-unit border:
the predictive stays a bar distribution (piecewise uniform in `y`), and the discretized
acquisition functions stay exact on it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from botorch_community.pfn.standardize import context_moments

#: The smallest tail parameter `delta` considered (heavier compression makes the outer
#: buckets' user-unit widths, and so the predictive's tails, explode).
MIN_DELTA = 0.4
#: The largest `delta` considered: 1 (a warp never makes the upper tail lighter than
#: the data's: that would understate improvements beyond the incumbent).
MAX_DELTA = 1.0
#: Skew parameters considered: `epsilon` in `[-MAX_EPSILON, MAX_EPSILON]`.
MAX_EPSILON = 2.0
#: The warp is used only if it raises the warped context's Gaussian log-likelihood by
#: this many nats over the plain standardisation (a chance gain of a two-parameter fit
#: to Gaussian data exceeds it about 2% of the time).
MIN_LOG_LIK_GAIN = 4.0
#: Contexts with fewer observed targets are only standardised.
MIN_WARP_CONTEXT = 6


class TargetMap:
    r"""`y -> t(y)`: standardise, then (optionally) warp and re-standardise.

    All parameters are 0-dim tensors in the targets' dtype. Maps act elementwise on
    tensors of any shape; NaN (pending) targets stay NaN.
    """

    def __init__(
        self,
        mean: Tensor,
        std: Tensor,
        epsilon: Optional[Tensor] = None,
        delta: Optional[Tensor] = None,
        warped_mean: Optional[Tensor] = None,
        warped_std: Optional[Tensor] = None,
        z_range: Optional[tuple[Tensor, Tensor]] = None,
    ) -> None:
        self.mean, self.std = mean.reshape(()), std.reshape(())
        self.warped = epsilon is not None
        if self.warped:
            self.epsilon, self.delta = epsilon.reshape(()), delta.reshape(())
            self.warped_mean, self.warped_std = warped_mean.reshape(()), warped_std.reshape(())
            # the knots of the linear continuation, in z and in psi(z)
            self.z_lo, self.z_hi = (t.reshape(()) for t in z_range)
            self.w_lo, self.w_hi = (_sinh_arcsinh(z, self.epsilon, self.delta)
                                    for z in (self.z_lo, self.z_hi))  # fmt: skip
            self.slope_lo, self.slope_hi = (_dpsi(z, self.epsilon, self.delta)
                                            for z in (self.z_lo, self.z_hi))  # fmt: skip

    @classmethod
    def fit(cls, train_Y: Tensor, warp: bool = True) -> "TargetMap":
        r"""The map of a context.

        Args:
            train_Y: `n x 1` targets (NaN: missing, ignored).
            warp: Fit the sinh-arcsinh warp (else standardise only).

        Returns:
            The fitted :class:`TargetMap`.
        """
        mean, std = context_moments(train_Y)
        plain = cls(mean, std)
        y = train_Y[~torch.isnan(train_Y)]
        if not warp or y.numel() < MIN_WARP_CONTEXT:
            return plain
        z = ((y - mean.reshape(())) / std.reshape(())).to(torch.float64)
        if not bool(z.std() > 0.5):  # targets constant up to round-off: not standardised
            return plain
        eps, delta, gain = _fit_sinh_arcsinh(z)
        if gain < MIN_LOG_LIK_GAIN:
            return plain
        w = _sinh_arcsinh(z, eps, delta)
        wm, ws = w.mean(), w.std()
        if not bool(ws > 0):
            return plain
        like = lambda v: torch.as_tensor(v, dtype=train_Y.dtype, device=train_Y.device)
        return cls(mean, std, like(eps), like(delta), like(wm), like(ws),
                   (like(z.min()), like(z.max())))  # fmt: skip

    # ------------------------------------------------------------------- maps
    def forward(self, y: Tensor) -> Tensor:
        r"""User targets to the network's space: `t(y)`."""
        z = (y - self.mean) / self.std
        if not self.warped:
            return z
        return (self._psi(z) - self.warped_mean.to(z)) / self.warped_std.to(z)

    def inverse(self, t: Tensor) -> Tensor:
        r"""The network's space to user targets: `t^{-1}` (e.g. of bucket borders)."""
        if not self.warped:
            return t * self.std.to(t) + self.mean.to(t)
        w = t * self.warped_std.to(t) + self.warped_mean.to(t)
        z = torch.sinh((torch.asinh(w) + self.epsilon.to(t)) / self.delta.to(t))
        lo, hi = self.w_lo.to(t), self.w_hi.to(t)
        z = torch.where(w > hi, self.z_hi.to(t) + (w - hi) / self.slope_hi.to(t), z)
        z = torch.where(w < lo, self.z_lo.to(t) + (w - lo) / self.slope_lo.to(t), z)
        return z * self.std.to(t) + self.mean.to(t)

    @property
    def latent_knots(self) -> Optional[Tensor]:
        r"""The two points of the network's axis where the warp turns linear (its
        inverse is only C^1 there), or None for an affine map."""
        if not self.warped:
            return None
        w = torch.stack([self.w_lo, self.w_hi])
        return (w - self.warped_mean) / self.warped_std

    def derivative(self, y: Tensor) -> Tensor:
        r"""`dt/dy` at user targets `y` (for mapping noise variances)."""
        if not self.warped:
            return torch.ones_like(y) / self.std.to(y)
        z = (y - self.mean) / self.std
        zc = z.clamp(self.z_lo.to(z), self.z_hi.to(z))  # linear outside: the knot's slope
        dpsi = _dpsi(zc, self.epsilon.to(z), self.delta.to(z))
        return dpsi / (self.std.to(z) * self.warped_std.to(z))

    def _psi(self, z: Tensor) -> Tensor:
        r"""The warp of standardised targets, linear beyond the context's range."""
        w = _sinh_arcsinh(z, self.epsilon.to(z), self.delta.to(z))
        lo, hi = self.z_lo.to(z), self.z_hi.to(z)
        w = torch.where(z > hi, self.w_hi.to(z) + (z - hi) * self.slope_hi.to(z), w)
        return torch.where(z < lo, self.w_lo.to(z) + (z - lo) * self.slope_lo.to(z), w)

    def variance_forward(self, y: Tensor, yvar: Tensor) -> Tensor:
        r"""Noise variances `yvar` of targets `y` in the network's space (delta method:
        `yvar t'(y)^2`); NaN (unknown) stays NaN."""
        return yvar * self.derivative(y).square()

    def __repr__(self) -> str:
        core = f"mean={float(self.mean):.4g}, std={float(self.std):.4g}"
        if self.warped:
            core += f", epsilon={float(self.epsilon):.3f}, delta={float(self.delta):.3f}"
        return f"TargetMap({core})"


def _sinh_arcsinh(z: Tensor, epsilon, delta) -> Tensor:
    return torch.sinh(delta * torch.asinh(z) - epsilon)


def _dpsi(z: Tensor, epsilon, delta) -> Tensor:
    return delta * torch.cosh(delta * torch.asinh(z) - epsilon) / torch.sqrt(1 + z.square())


def _profile_log_lik(z: Tensor, eps: Tensor, delta: Tensor) -> Tensor:
    r"""Gaussian log-likelihood of the warped `z` (at the MLE of mean and variance)
    plus the log-Jacobian, for each `(eps, delta)` pair (`G`-dim each; `z`: `n`).

    With `w = sinh(a)`, `a = delta asinh(z) - eps`, the log-Jacobian is
    `sum_i log(delta) + log cosh(a_i) - log(1 + z_i^2) / 2`, and
    `log cosh(a) = log1p(w^2) / 2` (no overflow: `|a| <= asinh(|z|) + 2`)."""
    a = torch.asinh(z)  # `n`
    w = torch.sinh(delta.unsqueeze(-1) * a - eps.unsqueeze(-1))  # `G x n`
    var = w.var(dim=-1, unbiased=False).clamp_min(1e-300)
    n = z.numel()
    log_jac = (
        n * delta.log()
        + 0.5 * torch.log1p(w.square()).sum(-1)
        - 0.5 * torch.log1p(z.square()).sum()
    )
    return -0.5 * n * (var.log() + 1.0 + math.log(2 * math.pi)) + log_jac


def _fit_sinh_arcsinh(z: Tensor) -> tuple[float, float, float]:
    r"""`(epsilon, delta, gain)`: the maximum-likelihood warp of standardised `z` on a
    grid (coarse, then fine around the best), and its log-likelihood gain over the
    identity."""
    identity = float(_profile_log_lik(z, z.new_zeros(1), z.new_ones(1))[0])
    kw = dict(dtype=z.dtype, device=z.device)
    e = torch.linspace(-MAX_EPSILON, MAX_EPSILON, 41, **kw)
    d = torch.linspace(MIN_DELTA, MAX_DELTA, 13, **kw)
    E, D = torch.meshgrid(e, d, indexing="ij")
    ll = _profile_log_lik(z, E.flatten(), D.flatten())
    best = int(ll.argmax())
    e0, d0 = float(E.flatten()[best]), float(D.flatten()[best])
    # refine: a grid of one coarse step around the best
    e = torch.linspace(e0 - 0.1, e0 + 0.1, 11, **kw).clamp(-MAX_EPSILON, MAX_EPSILON)
    d = torch.linspace(d0 - 0.05, d0 + 0.05, 11, **kw).clamp(MIN_DELTA, MAX_DELTA)
    E, D = torch.meshgrid(e, d, indexing="ij")
    ll = _profile_log_lik(z, E.flatten(), D.flatten())
    best = int(ll.argmax())
    return float(E.flatten()[best]), float(D.flatten()[best]), float(ll[best]) - identity
