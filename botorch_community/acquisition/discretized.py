#!/usr/bin/env python3
r"""Analytic acquisition functions for models with Riemann (bar) posteriors.

A PFN surrogate predicts, for every candidate ``x``, a piecewise-uniform density over
``B`` buckets (a
:class:`~botorch_community.posteriors.riemann.BoundedRiemannPosterior`).
Any acquisition function of the form

.. math::

    \alpha(x) = \int g(y) p(y | x) dy = \sum_i \frac{p_i(x)}{w_i}
        \int_{l_i}^{u_i} g(y) dy

is then exact and cheap once :math:`\int_l^u g` is known in closed form. This module
provides expected improvement (EI), its logarithm (LogEI), probability of improvement
(PI), a quantile-based upper confidence bound (UCB) and the "noisy" EI of PFNs trained
to predict improvements directly.

Where the posterior is a
:class:`~botorch_community.posteriors.gaussian_mixture.GaussianMixtureRiemannPosterior`
(``PFNModel``'s default predictive: the GP head's Gaussian mixture, whose buckets are
only its discretisation), EI, LogEI and PI integrate the mixture itself: ``J`` terms per
candidate instead of ``B`` buckets, and no discretisation error.

Conventions shared by all classes:

* ``forward`` takes ``b x 1 x d`` candidates and returns ``b`` values (q = 1).
* Direction: the objective is :math:`z = w y + o` if a single-output
  ``ScalarizedPosteriorTransform(weights=[w], offset=o)`` is given (identity
  otherwise); ``maximize=False`` minimizes :math:`z`. ``best_f`` lives in the space of
  :math:`z` (for no transform: the model's outcome space), as in BoTorch's analytic
  acquisition functions. Ax signals minimization with ``weights=[-1]``.
* Minimization is done exactly by reflecting the predicted density (no assumption on
  the model), unless ``assume_symmetric_posterior=True``, in which case the model is
  asked for the posterior of :math:`-y` with ``negate_train_ys=True`` (required by
  PFNs that were trained for maximization only, e.g. for noisy EI).
* ``X_pending`` (``n x d``) is passed to the model as
  ``model.posterior(X, pending_X=X_pending)``.
* Everything is computed in the dtype of the predicted probabilities (float64 for
  float64 inputs of a PFN model).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.objective import (
    PosteriorTransform,
    ScalarizedPosteriorTransform,
)
from botorch.exceptions.errors import UnsupportedError
from botorch.models.model import Model
from botorch.utils.transforms import (
    average_over_ensemble_models,
    t_batch_mode_transform,
)
from botorch_community.posteriors.gaussian_mixture import GaussianMixtureRiemannPosterior
from botorch_community.posteriors.riemann import BoundedRiemannPosterior
from torch import Tensor


def _accepts_kwarg(fn: Any, name: str) -> bool:
    r"""Whether callable `fn` accepts keyword argument `name` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins etc.
        return True
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


def _direction_from_transform(
    posterior_transform: PosteriorTransform | None,
) -> tuple[float, float]:
    r"""``(w, o)`` of a single-output scalarization ``z = w y + o`` (identity: 1, 0)."""
    if posterior_transform is None:
        return 1.0, 0.0
    if not isinstance(posterior_transform, ScalarizedPosteriorTransform):
        raise UnsupportedError(
            "Discretized acquisition functions only support a "
            "`ScalarizedPosteriorTransform` with a single non-zero weight, got "
            f"{type(posterior_transform).__name__}."
        )
    weights = posterior_transform.weights
    if weights.numel() != 1 or weights.item() == 0:
        raise UnsupportedError(
            "Discretized acquisition functions only support single-output models: "
            "the `ScalarizedPosteriorTransform` must have exactly one non-zero weight "
            f"(e.g. [1.0] to maximize or [-1.0] to minimize), got {weights.tolist()}. "
            "For outcome constraints or several objectives (e.g. in Ax), use an MC "
            "acquisition function such as botorch's qLogNoisyExpectedImprovement."
        )
    return float(weights.item()), float(posterior_transform.offset)


class DiscretizedAcquisitionFunction(AcquisitionFunction, ABC):
    r"""Abstract base class for acquisition functions over Riemann posteriors.

    The model's ``posterior(X, pending_X=None, ...)`` must return a
    :class:`BoundedRiemannPosterior`. Subclasses define the acquisition value in the
    *maximization-oriented* objective :math:`z' = \pm(w y + o)` either by implementing
    :meth:`ag_integrate` (:math:`\int_l^u g(z') dz'`, for acquisition functions of
    the form :math:`\int g(z') p(z') dz'`) or by overriding :meth:`_evaluate`.
    """

    def __init__(
        self,
        model: Model,
        posterior_transform: PosteriorTransform | None = None,
        assume_symmetric_posterior: bool = False,
        maximize: bool = True,
        X_pending: Tensor | None = None,
    ) -> None:
        r"""Initialize the acquisition function.

        Args:
            model: A fitted model whose ``posterior`` returns a
                ``BoundedRiemannPosterior`` (e.g. a ``PFNModel``).
            posterior_transform: ``None`` or a ``ScalarizedPosteriorTransform`` with
                a single non-zero weight ``w`` and offset ``o``; the objective is then
                ``z = w y + o``. ``weights=[-1.0]`` is how Ax requests minimization.
            assume_symmetric_posterior: If True and the objective decreases in ``y``,
                ask the model for the posterior of ``-y`` via
                ``model.posterior(..., negate_train_ys=True)`` instead of reflecting
                the posterior of ``y`` (which is exact for any model).
            maximize: If False, minimize the objective ``z``.
            X_pending: ``n x d`` points whose evaluation is pending; passed to the
                model as ``pending_X``.
        """
        super().__init__(model=model)
        self.posterior_transform = posterior_transform
        self.maximize = maximize
        self.assume_symmetric_posterior = assume_symmetric_posterior
        weight, offset = _direction_from_transform(posterior_transform)
        sign = 1.0 if maximize else -1.0
        # maximization-oriented objective: z' = scale * y + shift
        self._scale = sign * weight
        self._shift = sign * offset
        if self._negate_via_model and not _accepts_kwarg(
            model.posterior, "negate_train_ys"
        ):
            raise UnsupportedError(
                "`assume_symmetric_posterior=True` with a decreasing objective needs "
                "a model whose `posterior` accepts `negate_train_ys` (e.g. PFNModel), "
                f"but {type(model).__name__}.posterior does not; use "
                "`assume_symmetric_posterior=False`."
            )
        self.set_X_pending(X_pending)

    @property
    def _negate_via_model(self) -> bool:
        return self.assume_symmetric_posterior and self._scale < 0

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        r"""Set the ``n x d`` pending points, passed to the model as ``pending_X``.

        Raises:
            UnsupportedError: If `X_pending` is given but the model's ``posterior``
                has no ``pending_X`` argument.
        """
        if X_pending is not None:
            if X_pending.dim() != 2:
                raise ValueError(
                    f"`X_pending` must be an `n x d` tensor, got shape "
                    f"{tuple(X_pending.shape)}."
                )
            if not _accepts_kwarg(self.model.posterior, "pending_X"):
                raise UnsupportedError(
                    f"{type(self.model).__name__}.posterior does not accept a "
                    "`pending_X` argument, so this model cannot condition on pending "
                    "points; use a model that supports it (e.g. PFNModel) or pass "
                    "`X_pending=None`."
                )
        super().set_X_pending(X_pending)

    def _posterior(self, X: Tensor) -> BoundedRiemannPosterior:
        r"""The Riemann posterior of the maximization-oriented objective at `X`."""
        kwargs: dict[str, Any] = {}
        if self.X_pending is not None:
            kwargs["pending_X"] = self.X_pending
        if self._negate_via_model:
            kwargs["negate_train_ys"] = True
        posterior = self.model.posterior(X, **kwargs)
        if not isinstance(posterior, BoundedRiemannPosterior):
            raise UnsupportedError(
                f"{type(self).__name__} needs a model whose posterior is a "
                f"BoundedRiemannPosterior, got {type(posterior).__name__}."
            )
        if self._negate_via_model:  # the model returned the posterior of -y
            return posterior.affine(-self._scale, self._shift)
        return posterior.affine(self._scale, self._shift)

    @t_batch_mode_transform(expected_q=1)
    @average_over_ensemble_models
    def forward(self, X: Tensor) -> Tensor:
        r"""Evaluate the acquisition function.

        Args:
            X: A ``b x 1 x d`` tensor of candidates (``1 x d`` is treated as ``b = 1``).

        Returns:
            A ``b``-dim tensor of acquisition values.
        """
        return self._evaluate(self._posterior(X)).squeeze(-1)

    def _evaluate(self, posterior: BoundedRiemannPosterior) -> Tensor:
        r"""``batch_shape x q`` values from the oriented posterior."""
        return posterior.integrate(self.ag_integrate)

    @abstractmethod
    def ag_integrate(self, lower_bound: Tensor, upper_bound: Tensor) -> Tensor:
        r"""The integral :math:`\int_l^u g(z) dz` of the acquisition utility.

        Args:
            lower_bound: The ``B`` lower bucket edges (oriented objective units).
            upper_bound: The ``B`` upper bucket edges.

        Returns:
            A tensor of ``B`` integrals (or broadcastable to ``batch x q x B``).
        """


#: Upstream's spelling, kept so that code written against upstream keeps working.
DiscretizedAcquistionFunction = DiscretizedAcquisitionFunction


class _ThresholdMixin:
    r"""Shared handling of the incumbent ``best_f``.

    With pending points the incumbent is also raised to their best predicted value: a
    pending point enters the model's context with its predictive mean as target
    ("kriging believer", see ``PFNModel``), so it counts as observed at that value. A
    candidate next to a pending point predicted to improve then no longer improves on
    it (else EI would still be largest right beside it and batches would bunch up).
    """

    best_f: Tensor
    maximize: bool
    _pending_best: Tensor | None = None  # oriented, set by `set_X_pending`

    def _best_f_like(self, like: Tensor) -> Tensor:
        r"""``best_f`` as a scalar tensor like `like`."""
        if self.best_f.device != like.device:
            # moved once (e.g. a float incumbent for CUDA candidates): no host-to-device
            # copy per call, which would also break CUDA graph capture
            self.best_f = self.best_f.to(like.device)
        return self.best_f.to(like)

    def _threshold(self, like: Tensor) -> Tensor:
        r"""``best_f`` in the oriented objective, as a scalar tensor like `like`."""
        best_f = self._best_f_like(like)
        t = best_f if self.maximize else -best_f
        if self._pending_best is not None:
            t = torch.maximum(t, self._pending_best.to(like))
        return t

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        super().set_X_pending(X_pending)  # type: ignore[misc]
        self._pending_best = None
        if X_pending is not None and X_pending.shape[0] > 0:
            with torch.no_grad():  # the pending points' oriented means, given the data
                post = self.model.posterior(X_pending.detach().unsqueeze(-2))
                mean = post.affine(self._scale, self._shift).mean  # type: ignore[attr-defined]
            self._pending_best = mean.max().detach()


def posterior_mean_incumbent(
    model: Model,
    posterior_transform: PosteriorTransform | None = None,
    maximize: bool = True,
) -> Tensor:
    r"""The best posterior mean of the objective over the model's training inputs.

    .. math::

        f^* = \max_{i:\, y_i \text{ observed}} \mathbb{E}[z(x_i) \mid \mathcal{D}]
        \quad (\min \text{ if } maximize=False),

    the plug-in incumbent of noisy EI: with noisy observations ``max(train_Y)`` is the
    largest *noise draw*, which EI then tries to beat; the posterior mean at the
    observed inputs removes that bias, and for noise-free data it equals the best
    observation up to the model's fit at the observations.

    Args:
        model: A model with ``train_X`` (``n x d``) and ``train_Y`` (``n x 1``), such as
            :class:`~botorch_community.models.prior_fitted_network.PFNModel`.
        posterior_transform: Optional single-output ``ScalarizedPosteriorTransform``
            defining the objective :math:`z = w y + o`.
        maximize: If False, the smallest posterior mean.

    Returns:
        A scalar tensor (objective units).
    """
    train_X = getattr(model, "train_X", None)
    train_Y = getattr(model, "train_Y", None)
    if train_X is None or train_Y is None:
        raise UnsupportedError(
            f"`best_f=None` defaults the incumbent to the best posterior mean at the "
            f"model's training inputs, but {type(model).__name__} has no `train_X` / "
            "`train_Y`; pass `best_f` explicitly."
        )
    weight, offset = _direction_from_transform(posterior_transform)
    observed = ~torch.isnan(train_Y).any(dim=-1)  # n
    if train_X.dim() != 2 or not bool(observed.any()):
        raise UnsupportedError(
            "`best_f=None` needs an unbatched model with at least one observed target "
            f"(train_X of shape {tuple(train_X.shape)}); pass `best_f` explicitly."
        )
    with torch.no_grad():
        mean = model.posterior(train_X[observed]).mean[..., 0]  # n_obs
    z = weight * mean + offset
    return (z.max() if maximize else z.min()).detach()


def _check_best_f(best_f: float | Tensor) -> Tensor:
    r"""Validate `best_f`; Python numbers are kept in float64 (no float32 rounding)."""
    if not torch.is_tensor(best_f):
        best_f = torch.tensor(best_f, dtype=torch.float64)
    if best_f.numel() != 1:
        raise ValueError(
            "`best_f` must be a scalar (the best observed objective value); batched "
            f"`best_f` of shape {tuple(best_f.shape)} is not supported."
        )
    if not torch.isfinite(best_f).all():
        raise ValueError(f"`best_f` must be finite, got {best_f.item()}.")
    return best_f.reshape(())


def _improvement_integral(lower: Tensor, upper: Tensor, t: Tensor) -> Tensor:
    r""":math:`\int_l^u \max(z - t, 0) dz`, exact and C^1 in `t` (also at the edges).

    Three branches, each finite everywhere so that ``torch.where`` has no NaN
    gradients: the whole bucket improves (``t <= l``), part of it does
    (``l < t < u``), or none (``t >= u``).
    """
    width = upper - lower
    whole = width * ((lower + upper) / 2 - t)
    part = (upper - t).square() / 2
    zero = torch.zeros_like(whole)
    return torch.where(t <= lower, whole, torch.where(t < upper, part, zero))


class DiscretizedExpectedImprovement(_ThresholdMixin, DiscretizedAcquisitionFunction):
    r"""Exact expected improvement under a piecewise-uniform posterior.

    .. math::

        \mathrm{EI}(x) = \sum_i \frac{p_i(x)}{w_i} \int_{l_i}^{u_i} \max(z - f^*, 0) dz,

    where the bucket integral is :math:`w_i (m_i - f^*)` if :math:`f^* \le l_i`,
    :math:`(u_i - f^*)^2 / 2` if :math:`l_i < f^* < u_i` and 0 otherwise. EI is
    linear in the probabilities and continuously differentiable in :math:`f^*`.
    """

    def __init__(
        self,
        model: Model,
        best_f: float | Tensor | None = None,
        posterior_transform: PosteriorTransform | None = None,
        assume_symmetric_posterior: bool = False,
        maximize: bool = True,
        X_pending: Tensor | None = None,
    ) -> None:
        r"""Discretized expected improvement.

        Args:
            model: A model whose posterior is a ``BoundedRiemannPosterior``.
            best_f: The scalar incumbent in objective space (see module docstring),
                e.g. the best observed ``y`` of noise-free data. ``None`` (default):
                the best posterior mean at the model's training inputs
                (:func:`posterior_mean_incumbent`), right for noisy data too.
            posterior_transform: Optional single-output
                ``ScalarizedPosteriorTransform`` defining the objective.
            assume_symmetric_posterior: See
                :class:`DiscretizedAcquisitionFunction`.
            maximize: If False, compute the expected decrease below ``best_f``.
            X_pending: ``n x d`` pending points passed to the model as ``pending_X``.
        """
        super().__init__(
            model=model,
            posterior_transform=posterior_transform,
            assume_symmetric_posterior=assume_symmetric_posterior,
            maximize=maximize,
            X_pending=X_pending,
        )
        if best_f is None:
            best_f = posterior_mean_incumbent(model, posterior_transform, maximize)
        self.register_buffer("best_f", _check_best_f(best_f))

    def _evaluate(self, posterior: BoundedRiemannPosterior) -> Tensor:
        if isinstance(posterior, GaussianMixtureRiemannPosterior):  # no buckets needed
            return posterior.expected_improvement(self._threshold(posterior.means))
        return super()._evaluate(posterior)

    def ag_integrate(self, lower_bound: Tensor, upper_bound: Tensor) -> Tensor:
        r"""Bucket integrals :math:`\int_l^u \max(z - f^*, 0) dz`."""
        return _improvement_integral(
            lower_bound, upper_bound, self._threshold(lower_bound)
        )


class DiscretizedLogExpectedImprovement(DiscretizedExpectedImprovement):
    r"""Logarithm of the discretized expected improvement, computed in log space.

    .. math::

        \log \mathrm{EI}(x) = \operatorname{logsumexp}_i
            \left[\log p_i(x) - \log w_i + \log I_i(f^*)\right],

    over the buckets with :math:`p_i > 0` that reach above :math:`f^*`, with
    :math:`\log I_i = \log w_i + \log(m_i - f^*)` or :math:`2 \log(u_i - f^*) - \log 2`.
    This equals ``log(EI)`` wherever EI is positive, also where EI itself underflows
    (e.g. probabilities of ``1e-300`` in the only improving buckets).

    Where EI is exactly zero (no probability mass above :math:`f^*`, e.g. when
    :math:`f^*` lies above all buckets) the log is :math:`-\infty` and useless for
    optimization. There a finite, smooth surrogate is returned instead: the log of
    the expected *soft* improvement :math:`E[\tau \exp((z - f^*) / \tau)]` with a
    temperature :math:`\tau` (``tail_scale``, default: the mean bucket width),

    .. math::

        \log \sum_i \frac{p_i}{w_i} \tau^2 e^{(u_i - f^*)/\tau}
            \left(1 - e^{-w_i/\tau}\right),

    which increases as probability moves towards :math:`f^*` and has non-vanishing
    gradients w.r.t. the probabilities (and hence ``X``).

    Caveat: as a function of :math:`f^*` the value jumps at the edge of the EI = 0
    region (where :math:`\log \mathrm{EI} \to -\infty`). For a fixed :math:`f^*`
    and softmax probabilities (never exactly zero) that edge is only reached through
    underflow, so optimizing over ``X`` sees either the exact log EI everywhere or,
    when :math:`f^*` lies above all buckets, the surrogate everywhere.
    """

    _log: bool = True  # average ensembles with logmeanexp

    def __init__(
        self,
        model: Model,
        best_f: float | Tensor | None = None,
        posterior_transform: PosteriorTransform | None = None,
        assume_symmetric_posterior: bool = False,
        maximize: bool = True,
        X_pending: Tensor | None = None,
        tail_scale: float | None = None,
    ) -> None:
        r"""Discretized log expected improvement.

        Args:
            model: A model whose posterior is a ``BoundedRiemannPosterior``.
            best_f: The scalar incumbent in objective space; ``None`` (default): the
                best posterior mean at the training inputs (see
                :class:`DiscretizedExpectedImprovement`).
            posterior_transform: Optional single-output
                ``ScalarizedPosteriorTransform`` defining the objective.
            assume_symmetric_posterior: See
                :class:`DiscretizedAcquisitionFunction`.
            maximize: If False, compute the log expected decrease below ``best_f``.
            X_pending: ``n x d`` pending points passed to the model as ``pending_X``.
            tail_scale: Temperature :math:`\tau > 0` (objective units) of the surrogate
                used where EI is exactly zero; default: the mean bucket width.
        """
        super().__init__(
            model=model,
            best_f=best_f,
            posterior_transform=posterior_transform,
            assume_symmetric_posterior=assume_symmetric_posterior,
            maximize=maximize,
            X_pending=X_pending,
        )
        if tail_scale is not None and not tail_scale > 0:
            raise ValueError(f"`tail_scale` must be positive, got {tail_scale}.")
        self.tail_scale = tail_scale

    def _evaluate(self, posterior: BoundedRiemannPosterior) -> Tensor:
        if isinstance(posterior, GaussianMixtureRiemannPosterior):
            # the mixture's own log EI: finite wherever its Gaussians reach (always)
            return posterior.log_expected_improvement(self._threshold(posterior.means))
        probs = posterior.probabilities  # batch x q x B
        lower, upper = posterior.lower_borders, posterior.upper_borders
        width = upper - lower
        t = self._threshold(probs)
        neg_inf = probs.new_full((), float("-inf"))  # a fill, no host-to-device copy

        positive = probs > 0
        log_p = torch.where(positive, probs, torch.ones_like(probs)).log()

        # exact per-bucket log(I_i / w_i); every branch gets finite inputs only
        whole = t <= lower
        part = (t > lower) & (t < upper)
        log_whole = (torch.where(whole, (lower + upper) / 2 - t, 1.0)).log()
        log_part = (
            2 * torch.where(part, upper - t, 1.0).log() - math.log(2) - (width.log())
        )
        log_bucket = torch.where(whole, log_whole, log_part)  # B
        valid = positive & (whole | part)  # batch x q x B
        has_ei = valid.any(dim=-1, keepdim=True)
        exact_terms = torch.where(valid, log_p + log_bucket, neg_inf)
        exact_terms = torch.where(has_ei, exact_terms, 0.0)  # safe rows for lse
        log_ei = torch.logsumexp(exact_terms, dim=-1)

        # surrogate where EI == 0: log E[tau * exp((z - t) / tau)]
        tau = (
            probs.new_full((), float(self.tail_scale))
            if self.tail_scale is not None
            else width.mean()
        )
        log_tail_bucket = (
            2 * tau.log()
            + (upper - t) / tau
            + torch.log(-torch.expm1(-width / tau))
            - width.log()
        )
        tail_terms = torch.where(positive, log_p + log_tail_bucket, neg_inf)
        tail_terms = torch.where(has_ei, 0.0, tail_terms)  # safe rows for lse
        log_tail = torch.logsumexp(tail_terms, dim=-1)
        return torch.where(has_ei.squeeze(-1), log_ei, log_tail)

    def ag_integrate(self, lower_bound: Tensor, upper_bound: Tensor) -> Tensor:
        r"""Bucket integrals of plain EI (LogEI overrides ``_evaluate``)."""
        return super().ag_integrate(lower_bound, upper_bound)


class DiscretizedNoisyExpectedImprovement(DiscretizedExpectedImprovement):
    r"""Noisy EI for PFNs trained to predict the improvement itself.

    Such a model's posterior at ``x`` is the distribution of the improvement over the
    (noisy) incumbent of its training data, so this is EI with ``best_f = 0``.
    Because the predicted quantity is not the outcome, minimization cannot reflect
    the posterior: it always asks the model for ``negate_train_ys=True`` (as
    upstream does).
    """

    def __init__(
        self,
        model: Model,
        posterior_transform: PosteriorTransform | None = None,
        X_pending: Tensor | None = None,
        maximize: bool = True,
        best_f: float | Tensor = 0.0,
    ) -> None:
        r"""Discretized noisy expected improvement.

        Args:
            model: A PFN model trained to predict improvements, whose ``posterior``
                accepts ``negate_train_ys`` (needed for minimization).
            posterior_transform: ``None`` or a ``ScalarizedPosteriorTransform`` with a
                single weight of ``1.0`` or ``-1.0`` (minimization), offset zero.
            X_pending: ``n x d`` pending points passed to the model as ``pending_X``.
            maximize: If False, minimize.
            best_f: Threshold on the predicted improvement; 0 by default.
        """
        weight, offset = _direction_from_transform(posterior_transform)
        if abs(weight) != 1.0 or offset != 0.0:
            raise UnsupportedError(
                "DiscretizedNoisyExpectedImprovement only supports posterior "
                "transforms with weight 1.0 or -1.0 and offset 0 (the model predicts "
                f"improvements), got weight {weight} and offset {offset}."
            )
        super().__init__(
            model=model,
            best_f=best_f,
            posterior_transform=posterior_transform,
            assume_symmetric_posterior=True,
            maximize=maximize,
            X_pending=X_pending,
        )

    def _threshold(self, like: Tensor) -> Tensor:
        # The model predicts the improvement of the (possibly negated) problem, so
        # the threshold applies to that quantity without reflection.
        return self._best_f_like(like)


class DiscretizedProbabilityOfImprovement(
    _ThresholdMixin, DiscretizedAcquisitionFunction
):
    r"""Exact probability of improvement under a piecewise-uniform posterior.

    .. math::

        \mathrm{PI}(x) = \sum_i p_i(x) \,
            \mathrm{clamp}\left(\frac{u_i - f^*}{w_i}, 0, 1\right).
    """

    def __init__(
        self,
        model: Model,
        best_f: float | Tensor | None = None,
        posterior_transform: PosteriorTransform | None = None,
        assume_symmetric_posterior: bool = False,
        maximize: bool = True,
        X_pending: Tensor | None = None,
    ) -> None:
        r"""Discretized probability of improvement.

        Args:
            model: A model whose posterior is a ``BoundedRiemannPosterior``.
            best_f: The scalar incumbent in objective space; ``None`` (default): the
                best posterior mean at the training inputs.
            posterior_transform: Optional single-output
                ``ScalarizedPosteriorTransform`` defining the objective.
            assume_symmetric_posterior: See
                :class:`DiscretizedAcquisitionFunction`.
            maximize: If False, compute the probability of falling below ``best_f``.
            X_pending: ``n x d`` pending points passed to the model as ``pending_X``.
        """
        super().__init__(
            model=model,
            posterior_transform=posterior_transform,
            assume_symmetric_posterior=assume_symmetric_posterior,
            maximize=maximize,
            X_pending=X_pending,
        )
        if best_f is None:
            best_f = posterior_mean_incumbent(model, posterior_transform, maximize)
        self.register_buffer("best_f", _check_best_f(best_f))

    def _evaluate(self, posterior: BoundedRiemannPosterior) -> Tensor:
        if isinstance(posterior, GaussianMixtureRiemannPosterior):
            return posterior.probability_of_improvement(self._threshold(posterior.means))
        return super()._evaluate(posterior)

    def ag_integrate(self, lower_bound: Tensor, upper_bound: Tensor) -> Tensor:
        r"""Bucket integrals :math:`\int_l^u \mathbb{1}[z > f^*] dz`."""
        t = self._threshold(lower_bound)
        width = upper_bound - lower_bound
        return torch.where(
            t <= lower_bound,
            width,
            torch.where(t < upper_bound, upper_bound - t, torch.zeros_like(width)),
        )


class DiscretizedUpperConfidenceBound(DiscretizedAcquisitionFunction):
    r"""Upper confidence bound as a posterior quantile.

    For a Gaussian, :math:`\mu + \sqrt{\beta} \sigma` is the quantile at level
    :math:`\Phi(\sqrt{\beta})`. For the (generally skewed, bounded) Riemann posterior
    we use that quantile directly:

    .. math::

        \mathrm{UCB}(x) = F_{z'}^{-1}\left(\Phi(\sqrt{\beta}) \,\middle|\, x\right),

    of the maximization-oriented objective :math:`z'`, e.g. ``beta = 0.2`` gives the
    0.673 quantile, ``beta = 4`` the 0.977 quantile and ``beta = 0`` the median. For
    ``maximize=False`` this is minus the lower quantile of :math:`z` at level
    :math:`1 - \Phi(\sqrt{\beta})`, mirroring BoTorch's ``UpperConfidenceBound``. The
    level can also be given directly via ``quantile``.
    """

    def __init__(
        self,
        model: Model,
        beta: float | Tensor = 0.2,
        posterior_transform: PosteriorTransform | None = None,
        assume_symmetric_posterior: bool = False,
        maximize: bool = True,
        X_pending: Tensor | None = None,
        quantile: float | None = None,
    ) -> None:
        r"""Quantile-based upper confidence bound.

        Args:
            model: A model whose posterior is a ``BoundedRiemannPosterior``.
            beta: Non-negative exploration parameter; the quantile level is
                :math:`\Phi(\sqrt{\beta})`. Ignored if ``quantile`` is given.
            posterior_transform: Optional single-output
                ``ScalarizedPosteriorTransform`` defining the objective.
            assume_symmetric_posterior: See
                :class:`DiscretizedAcquisitionFunction`.
            maximize: If False, return minus the lower quantile (see above).
            X_pending: ``n x d`` pending points passed to the model as ``pending_X``.
            quantile: Optional level in (0, 1) overriding ``beta``.
        """
        super().__init__(
            model=model,
            posterior_transform=posterior_transform,
            assume_symmetric_posterior=assume_symmetric_posterior,
            maximize=maximize,
            X_pending=X_pending,
        )
        if quantile is None:
            beta = torch.as_tensor(beta, dtype=torch.float64)
            if beta.numel() != 1 or not beta.item() >= 0:
                raise ValueError(f"`beta` must be a non-negative scalar, got {beta}.")
            level = float(torch.special.ndtr(beta.sqrt()))
        else:
            if not 0 < quantile < 1:
                raise ValueError(f"`quantile` must lie in (0, 1), got {quantile}.")
            level = float(quantile)
        self.register_buffer("beta", torch.as_tensor(beta))
        self.quantile_level = level

    def _evaluate(self, posterior: BoundedRiemannPosterior) -> Tensor:
        return posterior.quantile(self.quantile_level).squeeze(-1)

    def ag_integrate(self, lower_bound: Tensor, upper_bound: Tensor) -> Tensor:
        raise NotImplementedError(  # pragma: no cover
            "UCB is a quantile, not an integral against the density."
        )


# ----------------------------------------------------------------------------
# Input constructors: in `discretized_input_constructors` (registered when the
# package `botorch_community.acquisition` is imported, i.e. before this module). Their
# names stay importable from here.
# ----------------------------------------------------------------------------

_MOVED_TO_INPUT_CONSTRUCTORS = frozenset(
    {
        "construct_inputs_discretized_best_f",
        "construct_inputs_discretized_noisy_ei",
        "construct_inputs_discretized_ucb",
    }
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_INPUT_CONSTRUCTORS:
        from botorch_community.acquisition import discretized_input_constructors

        return getattr(discretized_input_constructors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
