#!/usr/bin/env python3
r"""Bounded Riemann ("bar") posteriors, the output distribution of PFN surrogates.

A :class:`BoundedRiemannPosterior` describes, independently for every point of a
``batch_shape x q`` batch, a piecewise-uniform density on a bounded interval. The
interval ``[borders[0], borders[-1]]`` is cut into ``B`` buckets
``[l_i, u_i) = [borders[i], borders[i + 1])`` of width ``w_i = u_i - l_i``, and bucket
``i`` carries probability mass ``p_i``:

.. math::

    p(y) = \sum_{i=1}^{B} \frac{p_i}{w_i} \mathbb{1}[l_i \le y < u_i].

All moments, the cdf, the inverse cdf and the acquisition-function integrals are
available in closed form, so nothing here is approximated by sampling.

:class:`MultivariateRiemannPosterior` couples the ``q`` marginals of every batch
element through a Gaussian copula with a given correlation matrix.

Both are registered with :func:`botorch.sampling.get_sampler.get_sampler`: they use
BoTorch's (quasi-)MC normal samplers, whose ``N(0, 1)`` base samples are mapped
through the standard normal cdf :math:`\Phi` and the inverse cdf of the marginal.
Samples are therefore differentiable w.r.t. the bucket probabilities, so BoTorch's
MC acquisition functions (``qEI``, ``qLogNEI``, ``qUCB``, ...) work out of the box.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from botorch.posteriors.posterior import Posterior
from botorch.sampling.get_sampler import _get_sampler_mvn, GetSampler
from botorch.sampling.normal import NormalMCSampler
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor


def _sum_tolerance(dtype: torch.dtype) -> float:
    r"""How far the bucket probabilities may sum away from one, for `dtype`."""
    return 1e-2 if torch.finfo(dtype).bits <= 16 else 1e-3


class BoundedRiemannPosterior(Posterior):
    r"""Independent piecewise-uniform marginals on a common set of bucket borders.

    Shapes: ``probabilities`` is ``batch_shape x q x B``; :attr:`mean`,
    :attr:`variance` and samples carry a trailing output dimension of size one
    (``batch_shape x q x 1``), as BoTorch's MC acquisition functions expect.
    """

    #: ``base_sample_shape`` is ``batch_shape x q x 1``; the t-batch dims are those
    #: of ``batch_shape``, shared by all t-batches so that a candidate's value does not
    #: depend on its position in the batch.
    batch_range = (0, -2)

    def __init__(self, borders: Tensor, probabilities: Tensor) -> None:
        r"""Bounded Riemann posterior.

        Args:
            borders: A ``(B + 1)``-dim tensor of strictly increasing, finite bucket
                edges, in the units of the outcome. It is converted to the dtype and
                device of ``probabilities``.
            probabilities: A ``batch_shape x q x B`` tensor of non-negative bucket
                probabilities; every row must sum to one. Buckets of zero probability
                are allowed.
        """
        if not torch.is_tensor(probabilities) or not probabilities.is_floating_point():
            raise TypeError(
                "`probabilities` must be a floating point tensor of shape "
                "`batch_shape x q x B`."
            )
        if probabilities.dim() < 1:
            raise ValueError(
                "`probabilities` must have at least one dimension (the buckets), got "
                "a 0-dim tensor."
            )
        borders = torch.as_tensor(borders)
        if borders.dim() != 1 or borders.shape[0] < 2:
            raise ValueError(
                "`borders` must be a 1-dim tensor of `B + 1 >= 2` bucket edges, got "
                f"shape {tuple(borders.shape)}."
            )
        num_buckets = borders.shape[0] - 1
        if probabilities.shape[-1] != num_buckets:
            raise ValueError(
                f"`probabilities` has {probabilities.shape[-1]} buckets in its last "
                f"dimension but `borders` defines {num_buckets} (it has "
                f"{num_buckets + 1} edges); they must agree."
            )
        borders = borders.to(device=probabilities.device, dtype=probabilities.dtype)
        with torch.no_grad():
            if not torch.isfinite(borders).all():
                raise ValueError("`borders` must be finite (no inf or NaN).")
            if not (borders[1:] > borders[:-1]).all():
                raise ValueError(
                    "`borders` must be strictly increasing (after conversion to "
                    f"{probabilities.dtype}); sort them and drop duplicate edges."
                )
            if (probabilities < 0).any() or torch.isnan(probabilities).any():
                raise ValueError(
                    "`probabilities` must be non-negative and free of NaN; pass e.g. "
                    "`logits.softmax(dim=-1)`."
                )
            sums = probabilities.sum(dim=-1)
            tol = _sum_tolerance(probabilities.dtype)
            if ((sums - 1).abs() > tol).any():
                raise ValueError(
                    "Each row of `probabilities` must sum to one (tolerance "
                    f"{tol}); got sums between {sums.min().item():.6g} and "
                    f"{sums.max().item():.6g}. Normalize over the last dimension."
                )
        self.borders = borders
        self.probabilities = probabilities

    # ------------------------------------------------------------------ basics

    @property
    def lower_borders(self) -> Tensor:
        r"""The ``B`` left bucket edges :math:`l_i`."""
        return self.borders[:-1]

    @property
    def upper_borders(self) -> Tensor:
        r"""The ``B`` right bucket edges :math:`u_i`."""
        return self.borders[1:]

    @property
    def bucket_widths(self) -> Tensor:
        r"""The ``B`` bucket widths :math:`w_i = u_i - l_i` (all positive)."""
        return self.borders[1:] - self.borders[:-1]

    @property
    def num_buckets(self) -> int:
        r"""The number of buckets ``B``."""
        return self.borders.shape[0] - 1

    @property
    def cumprobs(self) -> Tensor:
        r"""The ``batch_shape x q x B`` cdf at the right bucket edges."""
        return self.probabilities.cumsum(dim=-1)

    @property
    def batch_shape(self) -> torch.Size:
        r"""The t-batch shape (``probabilities.shape[:-2]``)."""
        return self.probabilities.shape[:-2]

    @property
    def device(self) -> torch.device:
        r"""The torch device of the distribution."""
        return self.probabilities.device

    @property
    def dtype(self) -> torch.dtype:
        r"""The torch dtype of the distribution (that of ``probabilities``)."""
        return self.probabilities.dtype

    @property
    def base_sample_shape(self) -> torch.Size:
        r"""``batch_shape x q x 1``: one ``N(0, 1)`` base sample per marginal."""
        return self.probabilities.shape[:-1] + torch.Size([1])

    def _extended_shape(
        self,
        sample_shape: torch.Size = torch.Size(),  # noqa: B008
    ) -> torch.Size:
        r"""``sample_shape x batch_shape x q x 1``, the shape of samples."""
        return torch.Size(sample_shape) + self.probabilities.shape[:-1] + (1,)

    # ----------------------------------------------------------------- moments

    @property
    def mean(self) -> Tensor:
        r"""The ``batch_shape x q x 1`` mean, :math:`\sum_i p_i (l_i + u_i) / 2`."""
        midpoints = (self.borders[:-1] + self.borders[1:]) / 2
        return (self.probabilities * midpoints).sum(dim=-1, keepdim=True)

    @property
    def variance(self) -> Tensor:
        r"""The ``batch_shape x q x 1`` variance under the piecewise-uniform density.

        .. math::

            \mathrm{Var}[Y] = \sum_i p_i \left[(m_i - \mu)^2 + w_i^2 / 12\right],

        with midpoints :math:`m_i`; the centred form avoids the cancellation of
        :math:`E[Y^2] - E[Y]^2` when the outcomes are far from zero.
        """
        midpoints = (self.borders[:-1] + self.borders[1:]) / 2
        widths = self.bucket_widths
        centred = midpoints - self.mean  # batch_shape x q x B
        return (self.probabilities * (centred.square() + widths.square() / 12)).sum(
            dim=-1, keepdim=True
        )

    @property
    def mean_of_square(self) -> Tensor:
        r"""The ``batch_shape x q x 1`` second moment :math:`E[Y^2]`."""
        return self.variance + self.mean.square()

    @property
    def stddev(self) -> Tensor:
        r"""The ``batch_shape x q x 1`` standard deviation."""
        return self.variance.sqrt()

    # -------------------------------------------- cdf, density and inverse cdf

    def _to_trailing_samples(self, value: Tensor) -> tuple[Tensor, torch.Size]:
        r"""Reshape ``sample_shape x batch' x q'`` values to ``batch_shape x q x N``.

        The trailing dims of `value` must broadcast against ``batch_shape x q``; any
        leading dims form the ``sample_shape``. Returns the reshaped values and
        ``sample_shape``.
        """
        point_shape = self.probabilities.shape[:-1]
        n_point = len(point_shape)
        n_sample = max(value.dim() - n_point, 0)
        sample_shape = value.shape[:n_sample]
        try:
            value = value.expand(sample_shape + point_shape)
        except RuntimeError:
            raise ValueError(
                f"Values of shape {tuple(value.shape)} do not broadcast against the "
                f"posterior's `batch_shape x q` = {tuple(point_shape)}; pass "
                "`sample_shape x batch_shape x q` values."
            ) from None
        value = value.reshape(-1, *point_shape)  # N x batch_shape x q
        return value.movedim(0, -1), sample_shape

    @staticmethod
    def _from_trailing_samples(value: Tensor, sample_shape: torch.Size) -> Tensor:
        r"""Inverse of :meth:`_to_trailing_samples`."""
        value = value.movedim(-1, 0)
        return value.reshape(sample_shape + value.shape[1:])

    def _as_tensor(self, value: float | Tensor) -> Tensor:
        return torch.as_tensor(value, device=self.device, dtype=self.dtype)

    def _bucket_index(self, y: Tensor) -> Tensor:
        r"""Index ``i`` with ``l_i <= y < u_i``, clamped to ``[0, B - 1]``."""
        index = torch.searchsorted(self.borders, y.detach().contiguous(), right=True)
        return (index - 1).clamp(0, self.num_buckets - 1)

    def cdf(self, value: float | Tensor) -> Tensor:
        r"""The cdf, piecewise linear in `value`.

        Args:
            value: Outcomes of shape ``sample_shape x batch_shape x q`` (trailing dims
                broadcastable against ``batch_shape x q``), or a float.

        Returns:
            ``sample_shape x batch_shape x q`` probabilities :math:`P(Y \le y)`;
            0 below ``borders[0]`` and ``sum_i p_i`` (one) above ``borders[-1]``.
        """
        y, sample_shape = self._to_trailing_samples(self._as_tensor(value))
        index = self._bucket_index(y)  # batch_shape x q x N
        probs = self.probabilities
        below = torch.cat([torch.zeros_like(probs[..., :1]), probs[..., :-1]], -1)
        below = below.cumsum(dim=-1)  # cdf at the left edges
        fraction = ((y - self.borders[index]) / self.bucket_widths[index]).clamp(0, 1)
        result = below.gather(-1, index) + probs.gather(-1, index) * fraction
        return self._from_trailing_samples(result, sample_shape)

    def log_prob(self, value: float | Tensor) -> Tensor:
        r"""Log density :math:`\log p_i - \log w_i` of the bucket containing `value`.

        Args:
            value: Outcomes of shape ``sample_shape x batch_shape x q`` (trailing dims
                broadcastable against ``batch_shape x q``), or a float.

        Returns:
            ``sample_shape x batch_shape x q`` log densities; ``-inf`` outside
            ``[borders[0], borders[-1]]`` and in buckets of zero probability (with
            zero, not NaN, gradients there).
        """
        y, sample_shape = self._to_trailing_samples(self._as_tensor(value))
        index = self._bucket_index(y)
        prob = self.probabilities.gather(-1, index)
        inside = (y >= self.borders[0]) & (y <= self.borders[-1]) & (prob > 0)
        safe_prob = torch.where(inside, prob, torch.ones_like(prob))
        log_density = safe_prob.log() - self.bucket_widths[index].log()
        result = torch.where(
            inside, log_density, torch.full_like(log_density, float("-inf"))
        )
        return self._from_trailing_samples(result, sample_shape)

    def density(self, value: float | Tensor) -> Tensor:
        r"""The density, ``exp(log_prob(value))``; see :meth:`log_prob`."""
        return self.log_prob(value).exp()

    def icdf(self, value: float | Tensor) -> Tensor:
        r"""Inverse of the piecewise-linear cdf (differentiable).

        For a level :math:`u` falling into bucket :math:`i`, i.e.
        :math:`C_{i-1} < u \le C_i` with :math:`C_i = \sum_{j \le i} p_j`,

        .. math::

            F^{-1}(u) = l_i + w_i \frac{u - C_{i-1}}{p_i}.

        Buckets of zero probability are never selected (their cdf interval is
        empty), so there is no division by zero. The result is differentiable
        w.r.t. ``probabilities`` (and `value`).

        Args:
            value: Levels in ``[0, 1]`` of shape ``sample_shape x batch_shape x q``
                (trailing dims broadcastable against ``batch_shape x q``), or a float.

        Returns:
            A ``sample_shape x batch_shape x q x 1`` tensor of outcomes in
            ``[borders[0], borders[-1]]``.
        """
        u = self._as_tensor(value)
        with torch.no_grad():
            if ((u < 0) | (u > 1) | torch.isnan(u)).any():
                raise ValueError("`icdf` levels must lie in [0, 1].")
        u, sample_shape = self._to_trailing_samples(u)  # batch_shape x q x N
        probs = self.probabilities
        cumprobs = probs.cumsum(dim=-1)
        index = torch.searchsorted(
            cumprobs.detach().contiguous(), u.detach().contiguous()
        )
        index = index.clamp(max=self.num_buckets - 1)
        prob = probs.gather(-1, index)
        cdf_below = cumprobs.gather(-1, index) - prob
        safe_prob = torch.where(prob > 0, prob, torch.ones_like(prob))
        fraction = ((u - cdf_below) / safe_prob).clamp(0, 1)
        result = self.borders[index] + self.bucket_widths[index] * fraction
        return self._from_trailing_samples(result, sample_shape).unsqueeze(-1)

    def quantile(self, value: float | Tensor) -> Tensor:
        r"""Marginal quantiles, following ``GPyTorchPosterior.quantile``.

        Args:
            value: A level in ``[0, 1]`` (float or 0-dim tensor), or a 1-dim tensor of
                ``k`` levels.

        Returns:
            ``batch_shape x q x 1`` quantiles for a single level, or
            ``k x batch_shape x q x 1`` for ``k`` levels.
        """
        value = self._as_tensor(value)
        if value.dim() > 1:
            raise ValueError(
                "`quantile` takes a scalar or a 1-dim tensor of levels; use `icdf` "
                "for per-point levels."
            )
        if value.dim() == 0:
            return self.icdf(value)
        levels = value.view(-1, *([1] * self.probabilities.dim()))[..., 0]
        return self.icdf(levels)

    def confidence_region(
        self, confidence_level: float = 0.95
    ) -> tuple[Tensor, Tensor]:
        r"""Equal-tailed credible interval of each marginal.

        Args:
            confidence_level: The probability mass between the bounds, in (0, 1).

        Returns:
            Two ``batch_shape x q`` tensors, the ``(1 - c) / 2`` and ``(1 + c) / 2``
            quantiles.
        """
        if not 0 < confidence_level < 1:
            raise ValueError(
                f"`confidence_level` must lie in (0, 1), got {confidence_level}."
            )
        side = (1.0 - confidence_level) / 2
        lower = self.icdf(side).squeeze(-1)
        upper = self.icdf(1.0 - side).squeeze(-1)
        return lower, upper

    # ------------------------------------------------------------ affine maps

    def affine(
        self, scale: float | Tensor, shift: float | Tensor = 0.0
    ) -> BoundedRiemannPosterior:
        r"""The posterior of ``scale * Y + shift``, exactly.

        An affine map takes buckets to buckets: the borders become
        ``scale * borders + shift`` and the probabilities stay. For a negative `scale`
        the buckets are reversed, so the borders stay increasing.

        Args:
            scale: A non-zero scalar (float or one-element tensor).
            shift: A scalar added after scaling.

        Returns:
            A posterior of the same class (a :class:`MultivariateRiemannPosterior`
            keeps its correlation matrix: a common affine map of all ``q`` outcomes
            leaves their copula's normal scores correlated alike, up to a common sign
            flip that cancels). ``self`` for the identity map.
        """
        if torch.is_tensor(scale):
            if scale.numel() != 1:
                raise ValueError(
                    f"`scale` must be a scalar, got shape {tuple(scale.shape)}."
                )
            scale = scale.reshape(()).to(self.borders)
        if scale == 0:
            raise ValueError("A zero `scale` makes the posterior degenerate.")
        if torch.is_tensor(shift):
            shift = shift.reshape(()).to(self.borders)
        if not torch.is_tensor(scale) and not torch.is_tensor(shift):
            if scale == 1.0 and shift == 0.0:
                return self
        borders = self.borders * scale + shift
        probabilities = self.probabilities
        if scale < 0:
            borders = borders.flip(-1)
            probabilities = probabilities.flip(-1)
        return self._with_buckets(borders, probabilities)

    def _with_buckets(
        self, borders: Tensor, probabilities: Tensor
    ) -> BoundedRiemannPosterior:
        r"""A posterior like this one with other borders and probabilities."""
        return type(self)(borders=borders, probabilities=probabilities)

    # ------------------------------------------------------------- integration

    def integrate(self, ag_integrate_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        r"""Integrate a function against the density, bucket by bucket.

        .. math::

            \int g(y) p(y) dy = \sum_i \frac{p_i}{w_i} \int_{l_i}^{u_i} g(y) dy.

        Args:
            ag_integrate_fn: A vectorized function mapping the ``B`` lower and ``B``
                upper bucket edges to :math:`\int_{l}^{u} g(y) dy`, a tensor of shape
                ``B`` or broadcastable to ``batch_shape x q x B``.

        Returns:
            The ``batch_shape x q`` integrals.
        """
        lower, upper = self.borders[:-1], self.borders[1:]
        bucket_integrals = ag_integrate_fn(lower, upper)
        return (bucket_integrals * (self.probabilities / (upper - lower))).sum(-1)

    # ---------------------------------------------------------------- sampling

    @property
    def _point_shape(self) -> torch.Size:
        r"""``batch x q``: the shape of the distributions (one per point)."""
        return self.probabilities.shape[:-1]

    def _normals_to_points(
        self, sample_shape: torch.Size, base_samples: Tensor
    ) -> Tensor:
        r"""Validate base samples and return them as ``sample_shape x batch x q``."""
        sample_shape = torch.Size(sample_shape)
        if base_samples.shape[: len(sample_shape)] != sample_shape:
            raise ValueError(
                "`sample_shape` disagrees with shape of `base_samples`. "
                f"Got {sample_shape=} and {base_samples.shape=}."
            )
        point_shape = self._point_shape
        if base_samples.shape == sample_shape + point_shape + (1,):
            return base_samples.squeeze(-1)
        if base_samples.shape == sample_shape + point_shape:  # upstream's layout
            return base_samples
        raise ValueError(
            f"`base_samples` must have shape `sample_shape x batch_shape x q x 1` = "
            f"{tuple(sample_shape + point_shape + (1,))}, got "
            f"{tuple(base_samples.shape)}."
        )

    def rsample_from_base_samples(
        self, sample_shape: torch.Size, base_samples: Tensor
    ) -> Tensor:
        r"""Samples :math:`F^{-1}(\Phi(z))` from ``N(0, 1)`` base samples `z`.

        Args:
            sample_shape: The sample shape, a prefix of ``base_samples.shape``.
            base_samples: Standard normal samples of shape
                ``sample_shape x batch_shape x q x 1`` (as produced by BoTorch's normal
                samplers; ``sample_shape x batch_shape x q`` is also accepted).

        Returns:
            ``sample_shape x batch_shape x q x 1`` samples, differentiable w.r.t.
            ``probabilities``.
        """
        z = self._normals_to_points(sample_shape, base_samples)
        uniforms = torch.special.ndtr(z.to(self.probabilities))
        return self.icdf(uniforms)

    def rsample(self, sample_shape: torch.Size | None = None) -> Tensor:
        r"""Sample from the posterior (with gradients w.r.t. the probabilities).

        Args:
            sample_shape: The sample shape; defaults to ``torch.Size([1])``.

        Returns:
            ``sample_shape x batch_shape x q x 1`` samples.
        """
        sample_shape = torch.Size([1]) if sample_shape is None else sample_shape
        base_samples = torch.randn(
            self._extended_shape(sample_shape), device=self.device, dtype=self.dtype
        )
        return self.rsample_from_base_samples(sample_shape, base_samples)


class MultivariateRiemannPosterior(BoundedRiemannPosterior):
    r"""Riemann marginals coupled by a Gaussian copula over the ``q`` points.

    A joint sample is :math:`Y_j = F_j^{-1}(\Phi(Z_j))` with
    :math:`Z \sim \mathcal{N}(0, R)` for the ``q x q`` correlation matrix :math:`R`
    of each batch element. The marginals are exactly those of
    :class:`BoundedRiemannPosterior`; :math:`R` is the correlation of the normal
    scores :math:`\Phi^{-1}(F_j(Y_j))`, not the Pearson correlation of `Y`.
    """

    def __init__(
        self, borders: Tensor, probabilities: Tensor, correlation_matrix: Tensor
    ) -> None:
        r"""Gaussian-copula Riemann posterior.

        Args:
            borders: A ``(B + 1)``-dim tensor of strictly increasing bucket edges.
            probabilities: A ``batch_shape x q x B`` tensor of bucket probabilities.
            correlation_matrix: A ``batch_shape x q x q`` correlation matrix
                (symmetric, unit diagonal, positive semi-definite; jitter is added if
                it is only semi-definite).
        """
        super().__init__(borders=borders, probabilities=probabilities)
        if probabilities.dim() < 2:
            raise ValueError(
                "`probabilities` must be `batch_shape x q x B` (at least 2-dim) for a "
                "MultivariateRiemannPosterior."
            )
        q = probabilities.shape[-2]
        expected = probabilities.shape[:-1] + (q,)
        correlation_matrix = torch.as_tensor(correlation_matrix).to(probabilities)
        if correlation_matrix.shape != expected:
            raise ValueError(
                "`correlation_matrix` must have shape `batch_shape x q x q` = "
                f"{tuple(expected)}, got {tuple(correlation_matrix.shape)}."
            )
        with torch.no_grad():
            diag = correlation_matrix.diagonal(dim1=-2, dim2=-1)
            if not torch.allclose(diag, torch.ones_like(diag), atol=1e-4):
                raise ValueError(
                    "`correlation_matrix` must have a unit diagonal; normalize a "
                    "covariance C with `C / outer(sqrt(diag(C)), sqrt(diag(C)))`."
                )
            if not torch.allclose(
                correlation_matrix, correlation_matrix.mT, atol=1e-6, rtol=1e-5
            ):
                raise ValueError("`correlation_matrix` must be symmetric.")
        self.correlation_matrix = correlation_matrix

    def _with_buckets(
        self, borders: Tensor, probabilities: Tensor
    ) -> MultivariateRiemannPosterior:
        return type(self)(
            borders=borders,
            probabilities=probabilities,
            correlation_matrix=self.correlation_matrix,
        )

    @property
    def scale_tril(self) -> Tensor:
        r"""``batch_shape x q x q`` lower Cholesky factor of the correlation.

        Computed with jitter if needed; its rows are renormalized to unit length so
        that the latent normals have exactly unit variance (exact marginals).
        """
        L = psd_safe_cholesky(self.correlation_matrix)
        return L / L.norm(dim=-1, keepdim=True)

    def rsample_from_base_samples(
        self, sample_shape: torch.Size, base_samples: Tensor
    ) -> Tensor:
        r"""Joint samples :math:`F^{-1}(\Phi(L z))` from ``N(0, I)`` base samples `z`.

        Args:
            sample_shape: The sample shape, a prefix of ``base_samples.shape``.
            base_samples: Standard normal samples of shape
                ``sample_shape x batch_shape x q x 1`` (or ``... x q``).

        Returns:
            ``sample_shape x batch_shape x q x 1`` samples, differentiable w.r.t.
            ``probabilities`` and ``correlation_matrix``.
        """
        z = self._normals_to_points(sample_shape, base_samples).to(self.probabilities)
        correlated = (self.scale_tril @ z.unsqueeze(-1)).squeeze(-1)
        return self.icdf(torch.special.ndtr(correlated))


@GetSampler.register(BoundedRiemannPosterior)
def _get_sampler_riemann(
    posterior: BoundedRiemannPosterior,
    sample_shape: torch.Size,
    *,
    seed: int | None = None,
) -> NormalMCSampler:
    r"""Sobol (or, for very large ``q``, iid) normal sampler for Riemann posteriors."""
    return _get_sampler_mvn(posterior=posterior, sample_shape=sample_shape, seed=seed)
