#!/usr/bin/env python3
r"""A batched Gaussian-process prior over BO-like datasets (HEBO+-style, broadened).

Each dataset of a batch is drawn as follows (all datasets of one batch share the input
dimension `d`, because the network takes one `d` per call):

1. Inputs `X` uniform in `[0, 1]^d`; for a share of datasets (``local_x_prob``) some rows
   are instead placed close to other rows (as a BO run's points cluster near incumbents),
   a share of those (``local_x_exact_share``) exactly on another row (a repeated
   evaluation; a test row on an observed input).
2. Hyperparameters: kernel Matérn-5/2 (``matern_prob``) or RBF; ARD lengthscales per
   dimension, either Gamma (HEBO+) or log-normal with a location growing with
   `log(d_active) / 2` (dimension-scaled, as BoTorch's default prior); each dimension is
   irrelevant (dropped from the kernel) with probability ``irrelevant_prob``, at least one
   kept; outputscale Gamma (HEBO+) or log-normal; noise variance from a mixture (HEBO+'s
   log-normal, near noise-free log-uniform from ``1e-6``, noisy log-uniform up to ``1``);
   a Kumaraswamy input warping for a share of datasets (``warp_prob``); zero mean, or a
   small linear mean for a share of datasets (``linear_mean_prob``).
3. `f ~ GP(mean, k)` at `X` through a float64 Cholesky factor with jitter, `Y = f + eps`.

Everything is sampled batched on the device of the given generator (CPU or GPU), from a
``torch.Generator`` only, so a seed reproduces a batch exactly. The hyperparameters are
returned with the data (:class:`GPHyperparameters`), with the kernel, the mean and the
exact GP predictive, so benchmarks can compute oracle predictives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "GPHyperparameters",
    "GPPriorBatch",
    "GPPriorConfig",
    "sample_gamma",
    "sample_gp_prior",
    "sample_hyperparameters",
    "sample_inputs",
    "sample_targets",
]


@dataclass
class GPPriorConfig:
    r"""Hyperpriors of the GP prior. All fields are JSON-serialisable.

    Pairs are `(concentration, rate)` for Gamma, `(loc, scale)` for log-normal
    (parameters of the underlying normal), `(low, high)` for log-uniform.
    """

    num_features: int = 18  # the largest d
    min_dim: int = 1
    max_dim: Optional[int] = None  # defaults to num_features
    matern_prob: float = 0.7  # otherwise RBF
    # lengthscales (per dimension): Gamma (HEBO+) with this probability, else log-normal
    lengthscale_gamma_prob: float = 0.5
    lengthscale_gamma: tuple[float, float] = (1.2107, 1.5212)
    # log-normal: loc + lengthscale_dim_scaling * log(d_active) / 2, scale
    lengthscale_lognormal: tuple[float, float] = (-0.5, 0.75)
    lengthscale_dim_scaling: float = 1.0
    lengthscale_bounds: tuple[float, float] = (0.01, 100.0)
    irrelevant_prob: float = 0.3  # each dimension dropped from the kernel
    # if set, each dataset's probability of dropping a dimension is drawn uniformly from
    # [irrelevant_prob, irrelevant_prob_max] (high-d priors: from all to few relevant)
    irrelevant_prob_max: Optional[float] = None
    # outputscale: Gamma (HEBO+) with this probability, else log-normal
    outputscale_gamma_prob: float = 0.5
    outputscale_gamma: tuple[float, float] = (0.8452, 0.3994)
    outputscale_lognormal: tuple[float, float] = (0.0, 0.5)
    outputscale_min: float = 1e-4
    # noise variance: a mixture of HEBO+'s log-normal, a near noise-free log-uniform and a
    # noisy log-uniform, with these weights
    noise_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    noise_lognormal: tuple[float, float] = (-4.63, 0.5)
    noise_low: tuple[float, float] = (1e-6, 1e-3)
    noise_high: tuple[float, float] = (1e-3, 1.0)
    # Kumaraswamy input warping 1 - (1 - x^a)^b with log a, log b ~ N(0, warp_scale^2)
    warp_prob: float = 0.3
    warp_scale: float = 0.5
    # linear mean w^T (x - 1/2), w_i ~ N(0, linear_mean_scale^2 * outputscale), active dims
    linear_mean_prob: float = 0.1
    linear_mean_scale: float = 1.0
    # clustered inputs: in this share of datasets each row moves, with probability
    # local_x_share, next to another row (Gaussian offset, std log-uniform local_x_std)
    local_x_prob: float = 0.0
    local_x_share: float = 0.5
    local_x_std: tuple[float, float] = (0.01, 0.2)
    # of the moved rows, this share lands exactly on its source row (offset 0)
    local_x_exact_share: float = 0.0
    jitter: float = 1e-8  # relative to the outputscale, added to the kernel diagonal

    def __post_init__(self) -> None:
        for f in fields(self):  # JSON gives lists; keep tuples
            v = getattr(self, f.name)
            if isinstance(v, list):
                setattr(self, f.name, tuple(v))
        if self.max_dim is None:
            self.max_dim = self.num_features
        if self.irrelevant_prob_max is not None and not (
            0.0 <= self.irrelevant_prob <= self.irrelevant_prob_max < 1.0
        ):
            raise ValueError(
                f"Need 0 <= irrelevant_prob ({self.irrelevant_prob}) <= irrelevant_prob_max "
                f"({self.irrelevant_prob_max}) < 1."
            )
        if not 1 <= self.min_dim <= self.max_dim <= self.num_features:
            raise ValueError(
                f"Need 1 <= min_dim ({self.min_dim}) <= max_dim ({self.max_dim}) <= "
                f"num_features ({self.num_features})."
            )

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> "GPPriorConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown GP prior option(s): {unknown}. Known: {sorted(known)}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# ----------------------------------------------------------------- random primitives
def _rand(shape, g: torch.Generator, dtype=torch.float64) -> Tensor:
    return torch.rand(shape, generator=g, device=g.device, dtype=dtype)


def _randn(shape, g: torch.Generator, dtype=torch.float64) -> Tensor:
    return torch.randn(shape, generator=g, device=g.device, dtype=dtype)


def sample_gamma(
    concentration: float, rate: float, shape, generator: torch.Generator, tries: int = 12
) -> Tensor:
    r"""Gamma samples from a ``torch.Generator`` (Marsaglia-Tsang, vectorised).

    ``torch.distributions.Gamma`` takes no generator, so seeded sampling needs this.
    Uses `tries` proposals per sample (acceptance > 95% each), falls back to the mean in
    the (astronomically rare) case that all are rejected. Concentrations below one use
    `Gamma(a) = Gamma(a + 1) * U^(1/a)`.
    """
    shape = tuple(shape)
    a = float(concentration)
    boost = a < 1.0
    a_ = a + 1.0 if boost else a
    dd = a_ - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * dd)
    z = _randn((tries, *shape), generator)
    u = _rand((tries, *shape), generator)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (
        torch.log(u) < 0.5 * z**2 + dd - dd * v + dd * torch.log(v.clamp_min(1e-300))
    )
    first = torch.argmax(ok.to(torch.float32), dim=0, keepdim=True)
    x = dd * torch.gather(v, 0, first).squeeze(0)
    x = torch.where(ok.any(0), x, torch.full_like(x, a_))
    if boost:
        x = x * _rand(shape, generator).clamp_min(1e-300) ** (1.0 / a)
    return x / rate


def _lognormal(loc, scale: float, shape, g: torch.Generator) -> Tensor:
    return torch.exp(loc + scale * _randn(shape, g))


def _loguniform(low: float, high: float, shape, g: torch.Generator) -> Tensor:
    lo, hi = math.log(low), math.log(high)
    return torch.exp(lo + (hi - lo) * _rand(shape, g))


# ------------------------------------------------------------------- hyperparameters
@dataclass
class GPHyperparameters:
    r"""The GP hyperparameters of each dataset of a batch (float64 tensors).

    Attributes:
        lengthscale: `b x d` ARD lengthscales (values of inactive dims are unused).
        active: `b x d` bool; False marks an irrelevant dimension (not in the kernel).
        outputscale: `b` kernel variances.
        noise_var: `b` observation-noise variances.
        is_matern: `b` bool; True: Matérn-5/2 kernel, False: RBF.
        warp_a, warp_b: `b x d` Kumaraswamy warping parameters (ones: no warping).
        mean_weight: `b x d` weights of the linear mean `w^T (x - 1/2)` (zeros: zero mean).
        jitter: Diagonal jitter relative to the outputscale used for Cholesky factors.
    """

    lengthscale: Tensor
    active: Tensor
    outputscale: Tensor
    noise_var: Tensor
    is_matern: Tensor
    warp_a: Tensor
    warp_b: Tensor
    mean_weight: Tensor
    jitter: float = 1e-8

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "jitter"]

    @property
    def batch_size(self) -> int:
        return self.lengthscale.shape[0]

    @property
    def dim(self) -> int:
        return self.lengthscale.shape[1]

    def index(self, idx) -> "GPHyperparameters":
        r"""The hyperparameters of a subset of datasets (``idx`` indexes the batch)."""
        kw = {k: getattr(self, k)[idx] for k in self._tensor_fields()}
        return GPHyperparameters(**kw, jitter=self.jitter)

    def to(self, *args, **kwargs) -> "GPHyperparameters":
        kw = {k: getattr(self, k).to(*args, **kwargs) for k in self._tensor_fields()}
        return GPHyperparameters(**kw, jitter=self.jitter)

    def as_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self._tensor_fields()}

    def warp(self, X: Tensor) -> Tensor:
        r"""Kumaraswamy CDF per dimension; identity where `a = b = 1`."""
        X = X.to(torch.float64).clamp(0.0, 1.0)
        a, b = self.warp_a.unsqueeze(-2), self.warp_b.unsqueeze(-2)
        eps = 1e-12
        Xc = X.clamp(eps, 1.0 - eps)
        W = 1.0 - (1.0 - Xc**a).clamp_min(0.0) ** b
        W = torch.where(X >= 1.0, torch.ones_like(W), torch.where(X <= 0.0, torch.zeros_like(W), W))
        unwarped = (a == 1.0) & (b == 1.0)
        return torch.where(unwarped, X, W)

    def _scaled(self, X: Tensor) -> Tensor:
        inv = torch.where(self.active, 1.0 / self.lengthscale, torch.zeros_like(self.lengthscale))
        return self.warp(X) * inv.unsqueeze(-2)

    def covariance(self, X1: Tensor, X2: Optional[Tensor] = None) -> Tensor:
        r"""Noise-free kernel matrices `k(X1, X2)`.

        Args:
            X1: `b x n1 x d` inputs in the unit cube.
            X2: `b x n2 x d` inputs (defaults to `X1`).

        Returns:
            `b x n1 x n2` float64 covariances.
        """
        Z1 = self._scaled(X1)
        Z2 = Z1 if X2 is None else self._scaled(X2)
        r2 = (
            Z1.pow(2).sum(-1, keepdim=True)
            + Z2.pow(2).sum(-1).unsqueeze(-2)
            - 2.0 * Z1 @ Z2.transpose(-1, -2)
        ).clamp_min(0.0)
        if X2 is None:  # exact zeros on the diagonal
            r2 = r2 * (1.0 - torch.eye(r2.shape[-1], dtype=r2.dtype, device=r2.device))
        r = r2.sqrt()
        s5r = math.sqrt(5.0) * r
        matern = (1.0 + s5r + (5.0 / 3.0) * r2) * torch.exp(-s5r)
        rbf = torch.exp(-0.5 * r2)
        k = torch.where(self.is_matern.view(-1, 1, 1), matern, rbf)
        return self.outputscale.view(-1, 1, 1) * k

    def variance(self, X: Tensor) -> Tensor:
        r"""Prior variance of the noise-free `f` at `X` (`b x n`), the outputscale."""
        return self.outputscale.view(-1, 1).expand(X.shape[0], X.shape[-2])

    def mean(self, X: Tensor) -> Tensor:
        r"""Prior mean at `X`: `b x n x 1` (float64)."""
        return ((X.to(torch.float64) - 0.5) @ self.mean_weight.unsqueeze(-1))

    def predictive(
        self, train_X: Tensor, train_Y: Tensor, test_X: Tensor, noisy: bool = True
    ) -> tuple[Tensor, Tensor]:
        r"""The exact GP predictive at `test_X` given the data, with these
        hyperparameters (the oracle: it knows them).

        Args:
            train_X: `b x n x d` (n may be 0).
            train_Y: `b x n x 1` observed (noisy) targets.
            test_X: `b x m x d`.
            noisy: Predict the noisy target `y` (default) or the noise-free `f`.

        Returns:
            Mean and variance, each `b x m x 1`, float64.
        """
        mu_t = self.mean(test_X)
        var_t = self.variance(test_X).unsqueeze(-1)
        if train_X.shape[-2] > 0:
            K = self.covariance(train_X)
            K = K + self.noise_var.view(-1, 1, 1) * torch.eye(
                K.shape[-1], dtype=K.dtype, device=K.device
            )
            L = _robust_cholesky(K, self.outputscale * self.jitter)
            Ks = self.covariance(train_X, test_X)  # `b x n x m`
            resid = train_Y.to(torch.float64) - self.mean(train_X)
            A = torch.linalg.solve_triangular(L, Ks, upper=False)  # `b x n x m`
            a = torch.linalg.solve_triangular(L, resid, upper=False)  # `b x n x 1`
            mu_t = mu_t + A.transpose(-1, -2) @ a
            var_t = (var_t - A.pow(2).sum(-2).unsqueeze(-1)).clamp_min(0.0)
        if noisy:
            var_t = var_t + self.noise_var.view(-1, 1, 1)
        return mu_t, var_t


def sample_hyperparameters(
    batch_size: int,
    dim: int,
    config: Optional[GPPriorConfig] = None,
    generator: Optional[torch.Generator] = None,
) -> GPHyperparameters:
    r"""Draw `batch_size` datasets' hyperparameters for inputs of dimension `dim`.

    All sampling happens on ``generator.device`` from ``generator`` alone.
    """
    cfg = config or GPPriorConfig()
    g = generator if generator is not None else torch.Generator()
    b, d = batch_size, dim
    # irrelevant dimensions, at least one kept
    p_irrelevant: Union[float, Tensor] = cfg.irrelevant_prob
    if cfg.irrelevant_prob_max is not None:  # guarded: the stream of older configs is kept
        span = cfg.irrelevant_prob_max - cfg.irrelevant_prob
        p_irrelevant = cfg.irrelevant_prob + span * _rand((b, 1), g)
    active = _rand((b, d), g) >= p_irrelevant
    keep = torch.randint(0, d, (b,), generator=g, device=g.device)
    active[torch.arange(b, device=g.device), keep] = True
    d_active = active.sum(-1, keepdim=True).to(torch.float64)
    # lengthscales
    ls_gamma = sample_gamma(*cfg.lengthscale_gamma, (b, d), g)
    loc, scale = cfg.lengthscale_lognormal
    loc = loc + cfg.lengthscale_dim_scaling * 0.5 * torch.log(d_active)
    ls_logn = _lognormal(loc, scale, (b, d), g)
    use_gamma = (_rand((b, 1), g) < cfg.lengthscale_gamma_prob)
    lengthscale = torch.where(use_gamma, ls_gamma, ls_logn).clamp(*cfg.lengthscale_bounds)
    # outputscale
    os_gamma = sample_gamma(*cfg.outputscale_gamma, (b,), g)
    os_logn = _lognormal(cfg.outputscale_lognormal[0], cfg.outputscale_lognormal[1], (b,), g)
    outputscale = torch.where(_rand((b,), g) < cfg.outputscale_gamma_prob, os_gamma, os_logn)
    outputscale = outputscale.clamp_min(cfg.outputscale_min)
    # noise variance: a three-component mixture
    w = torch.tensor(cfg.noise_weights, dtype=torch.float64)
    cum = (w.cumsum(0) / w.sum()).tolist()
    u = _rand((b,), g)
    n_logn = _lognormal(cfg.noise_lognormal[0], cfg.noise_lognormal[1], (b,), g)
    n_low = _loguniform(*cfg.noise_low, (b,), g)
    n_high = _loguniform(*cfg.noise_high, (b,), g)
    noise_var = torch.where(u < cum[0], n_logn, torch.where(u < cum[1], n_low, n_high))
    # kernel family
    is_matern = _rand((b,), g) < cfg.matern_prob
    # input warping
    warped = (_rand((b, 1), g) < cfg.warp_prob)
    wa = _lognormal(0.0, cfg.warp_scale, (b, d), g)
    wb = _lognormal(0.0, cfg.warp_scale, (b, d), g)
    one = torch.ones_like(wa)
    warp_a, warp_b = torch.where(warped, wa, one), torch.where(warped, wb, one)
    # linear mean on the active dims
    lin = (_rand((b, 1), g) < cfg.linear_mean_prob) & active
    wm = _randn((b, d), g) * cfg.linear_mean_scale * outputscale.sqrt().unsqueeze(-1)
    mean_weight = torch.where(lin, wm, torch.zeros_like(wm))
    hp = GPHyperparameters(
        lengthscale=lengthscale,
        active=active,
        outputscale=outputscale,
        noise_var=noise_var,
        is_matern=is_matern,
        warp_a=warp_a,
        warp_b=warp_b,
        mean_weight=mean_weight,
        jitter=cfg.jitter,
    )
    return hp


def sample_inputs(
    batch_size: int,
    seq_len: int,
    dim: int,
    config: Optional[GPPriorConfig] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Inputs `b x L x d` in the unit cube (float64): uniform, and for a share of
    datasets (``local_x_prob``) some rows moved next to other rows."""
    cfg = config or GPPriorConfig()
    g = generator if generator is not None else torch.Generator()
    X = _rand((batch_size, seq_len, dim), g)
    if cfg.local_x_prob > 0 and seq_len > 1:
        local = (_rand((batch_size, 1, 1), g) < cfg.local_x_prob) & (
            _rand((batch_size, seq_len, 1), g) < cfg.local_x_share
        )
        src = torch.randint(0, seq_len, (batch_size, seq_len), generator=g, device=g.device)
        centers = torch.gather(X, 1, src.unsqueeze(-1).expand(-1, -1, dim))
        std = _loguniform(*cfg.local_x_std, (batch_size, 1, 1), g)
        offset = std * _randn(X.shape, g)
        if cfg.local_x_exact_share > 0:  # guarded: the stream of older configs is kept
            exact = _rand((batch_size, seq_len, 1), g) < cfg.local_x_exact_share
            offset = torch.where(exact, torch.zeros_like(offset), offset)
        moved = (centers + offset).clamp(0.0, 1.0)
        X = torch.where(local, moved, X)
    return X


def _robust_cholesky(K: Tensor, base_jitter: Tensor, max_tries: int = 6) -> Tensor:
    r"""Cholesky of `b x n x n` (float64), adding jitter `base_jitter * 10^k` (per
    batch element, `k = 0, 1, ...`) to the diagonal of the elements that fail."""
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    jit = base_jitter.to(K).view(-1, 1, 1)
    L, info = torch.linalg.cholesky_ex(K + jit * eye)
    for _ in range(max_tries):
        bad = info != 0
        if not bool(bad.any()):
            return L
        jit = torch.where(bad.view(-1, 1, 1), jit * 10.0, jit)
        L2, info2 = torch.linalg.cholesky_ex(K[bad] + jit[bad] * eye)
        L = L.clone()
        L[bad] = L2
        info = info.clone()
        info[bad] = info2
    if bool((info != 0).any()):
        raise RuntimeError("Cholesky failed even with large jitter.")
    return L


def sample_targets(
    hypers: GPHyperparameters, X: Tensor, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    r"""Draw `f ~ GP(mean, k)` at `X` and noisy `Y = f + eps`.

    Args:
        hypers: Hyperparameters of `b` datasets.
        X: `b x L x d` inputs.
        generator: The random source (on the device of `X`).

    Returns:
        `f` and `Y`, each `b x L x 1`, float64.
    """
    g = generator if generator is not None else torch.Generator(device=X.device)
    b, L = X.shape[0], X.shape[-2]
    K = hypers.covariance(X)
    chol = _robust_cholesky(K, hypers.outputscale * hypers.jitter)
    z = _randn((b, L, 1), g)
    f = hypers.mean(X) + chol @ z
    Y = f + hypers.noise_var.sqrt().view(-1, 1, 1) * _randn((b, L, 1), g)
    return f, Y


@dataclass
class GPPriorBatch:
    r"""A batch of datasets from the GP prior.

    Attributes:
        X: `b x L x d` inputs in the unit cube.
        Y: `b x L x 1` noisy targets.
        f: `b x L x 1` noise-free function values.
        hypers: The hyperparameters of each dataset.
    """

    X: Tensor
    Y: Tensor
    f: Tensor
    hypers: GPHyperparameters

    def oracle_predictive(self, n: int, noisy: bool = True) -> tuple[Tensor, Tensor]:
        r"""Exact GP predictive (true hyperparameters) of rows `n:` given rows `:n`.

        Returns:
            Mean and variance, each `b x (L - n) x 1`, float64.
        """
        return self.hypers.predictive(
            self.X[:, :n], self.Y[:, :n], self.X[:, n:], noisy=noisy
        )


def sample_gp_prior(
    batch_size: int,
    seq_len: int,
    config: Optional[GPPriorConfig] = None,
    *,
    dim: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> GPPriorBatch:
    r"""Sample a batch of datasets from the GP prior.

    Args:
        batch_size: Number of datasets `b`.
        seq_len: Rows per dataset `L` (split into context and test rows by the caller).
        config: Hyperpriors; defaults to :class:`GPPriorConfig()`.
        dim: Input dimension shared by the batch; drawn uniformly from
            `{min_dim, ..., max_dim}` (with the generator) when None.
        generator: Random source; its device is where everything is sampled. A fresh
            unseeded CPU generator when None (``device`` then picks the device).
        device: Only used when ``generator`` is None.
        dtype: Dtype of the returned `X`, `Y`, `f` (hyperparameters stay float64).

    Returns:
        A :class:`GPPriorBatch`.
    """
    cfg = config or GPPriorConfig()
    if generator is None:
        generator = torch.Generator(device=device or "cpu")
        generator.seed()
    g = generator
    if dim is None:
        dim = int(torch.randint(cfg.min_dim, cfg.max_dim + 1, (1,), generator=g, device=g.device))
    if not 1 <= dim <= cfg.num_features:
        raise ValueError(f"dim must be in [1, {cfg.num_features}], got {dim}.")
    hypers = sample_hyperparameters(batch_size, dim, cfg, g)
    X = sample_inputs(batch_size, seq_len, dim, cfg, g)
    f, Y = sample_targets(hypers, X, g)
    return GPPriorBatch(X=X.to(dtype), Y=Y.to(dtype), f=f.to(dtype), hypers=hypers)
