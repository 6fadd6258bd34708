#!/usr/bin/env python3
r"""BoTorch models on a prior-data fitted network (PFN) with a cached training context.

:class:`PFNModel` returns a :class:`BoundedRiemannPosterior` (a bar distribution) at any
`b? x q? x d` inputs. The training context is encoded once into a
:class:`~botorch_community.pfn.kv_cache.KVCache` owned by the model, and every posterior
call (every raw sample, restart and L-BFGS step of ``optimize_acqf``) attends to it.
Exactness: the cached path equals the reference path (context re-encoded with every test
batch) to float32 round-off, in values and in gradients w.r.t. the test inputs, because
the context never attends to test points.

:class:`MultivariatePFNModel` adds a Gaussian-copula joint posterior over the `q` points.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Optional, Union

import torch
from botorch.acquisition.objective import (
    PosteriorTransform,
    ScalarizedPosteriorTransform,
)
from botorch.exceptions.errors import UnsupportedError
from botorch.models.model import Model
from botorch.models.transforms.input import InputTransform
from gpytorch.likelihoods.gaussian_likelihood import FixedNoiseGaussianLikelihood
from torch import Tensor

from botorch_community.models._model_options import construct_pfn_inputs
from botorch_community.models.deferred_checks import check_or_defer, deferring_checks
from botorch_community.pfn.kv_cache import KVCache
from botorch_community.pfn.networks import load_network
from botorch_community.pfn.target_map import TargetMap
from botorch_community.pfn.symmetries import (
    apply_input_symmetries,
    input_symmetries,
    num_input_symmetries,
)
from botorch_community.pfn.gp_head import GPMixture, PriorLogits
from botorch_community.pfn.transformer import PFNTransformer
from botorch_community.posteriors.gaussian_mixture import (
    GaussianMixtureRiemannPosterior,
    IncreasingOutcomeMap,
)
from botorch_community.posteriors.riemann import (
    BoundedRiemannPosterior,
    MultivariateRiemannPosterior,
)

logger = logging.getLogger(__name__)


class _SharedNetwork:
    r"""Holds the network outside of ``nn.Module`` registration.

    BoTorch's analytic acquisition functions call ``self.to(X)``, which would cast every
    registered submodule (and so a shared network) to `X`'s dtype. Keeping the network
    in this holder means ``model.to(...)``, ``state_dict()`` and ``deepcopy`` leave it
    alone: models built on the same network share it, and each keeps its own context.
    """

    __slots__ = ("network",)

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def __deepcopy__(self, memo: dict) -> "_SharedNetwork":
        return self  # share, never copy, the (read-only) network

    def __reduce__(self) -> tuple:
        # The shipped default, a loaded checkpoint or a registered network pickles as a
        # reference (a few bytes; unpickled models share the process's network).
        from botorch_community.pfn.networks import network_reference

        ref = network_reference(self.network)
        if ref is not None:
            return (_shared_from_reference, (ref,))
        return (_SharedNetwork, (self.network,))


def _shared_from_reference(ref: tuple) -> _SharedNetwork:
    from botorch_community.pfn.networks import resolve_network_reference

    return _SharedNetwork(resolve_network_reference(ref))


def _as_network(
    model: Optional[torch.nn.Module],
    checkpoint_path: Optional[str],
    device: Union[str, torch.device, None] = None,
    dim: Optional[int] = None,
) -> PFNTransformer:
    r"""The network of a model: `model` itself, else the checkpoint at
    `checkpoint_path` (a local path, or a name given to ``register_network``), else the
    shipped network for inputs of dimension `dim` (the default network up to `d = 18`,
    the high-dimensional one above). Checkpoints are loaded once per process and shared by all
    models (:func:`botorch_community.pfn.networks.load_network`)."""
    if model is not None:
        if not isinstance(model, PFNTransformer):
            raise UnsupportedError(
                "`model` must be a botorch_community.pfn.PFNTransformer (got "
                f"{type(model).__name__}). Networks from the `pfns` package are not "
                "supported: their context cannot be cached."
            )
        return model
    if checkpoint_path is not None and "://" in str(checkpoint_path):
        raise UnsupportedError(
            f"checkpoint_url={checkpoint_path!r} looks like a URL; nothing is downloaded "
            "at run time. Pass a local checkpoint path, or leave it unset for the "
            "default network shipped with the package."
        )
    return load_network(checkpoint_path, device, dim=dim)


class PFNModel(Model):
    r"""A BoTorch model whose predictive is a PFN's bar distribution.

    Example:
        >>> model = PFNModel(train_X, train_Y)  # the shipped default network
        >>> acqf = DiscretizedExpectedImprovement(model, best_f=train_Y.max())
        >>> with model.cache_training_context():
        ...     candidate, _ = optimize_acqf(acqf, bounds, q=1, num_restarts=8,
        ...                                  raw_samples=512)
    """

    _num_outputs = 1

    def __init__(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        model: Optional[PFNTransformer] = None,
        checkpoint_url: Optional[str] = None,
        train_Yvar: Optional[Tensor] = None,
        input_transform: Optional[InputTransform] = None,
        cache_context: bool = True,
        network_dtype: Optional[torch.dtype] = None,
        ensemble_size: int = 1,
        warp_targets: bool = True,
        predictive: Optional[str] = None,
        warm_start: Optional["PFNModel"] = None,
    ) -> None:
        r"""
        Args:
            train_X: `n x d` training inputs. Without an `input_transform` they should
                lie in the unit cube (the network was trained on `[0, 1]^d`).
            train_Y: `n x 1` training targets (standardised internally).
            model: A :class:`~botorch_community.pfn.PFNTransformer`. Defaults to the
                pretrained network shipped with the package for `d` inputs: the default
                network up to `d = 18`, the high-dimensional one (cell tokens) up to
                `d = 100`.
            checkpoint_url: A local checkpoint path written by
                ``python -m botorch_community.pfn.train`` (ignored if `model` is given).
                Named for compatibility with upstream; no URL is ever downloaded.
            train_Yvar: `n x 1` known observation-noise variances of `train_Y` (0 for
                a noise-free objective; NaN where unknown). Networks trained with noise
                hints (``noise_hint=True``) condition on them and, e.g., interpolate
                noise-free data instead of explaining part of it as noise; other
                networks ignore them and infer the noise from the data, as they do
                without `train_Yvar`. Pending points get the median known variance.
            input_transform: A BoTorch input transform applied to training and test
                inputs (e.g. ``Normalize(d, bounds=...)`` to map to the unit cube).
            cache_context: If True (default), the encoded context is kept between
                posterior calls and re-encoded only when what it was computed from
                changes. If False, every call runs the reference path (the context is
                re-encoded together with, and expanded to, each test batch), except
                inside :meth:`cache_training_context`.
            network_dtype: The dtype the network computes in. Default: the network's
                own dtype with ``predictive="gp"``: the network then only proposes the
                GP head's particles, once per context, and the predictive and its
                gradients are the head's float64 GP algebra on the unrounded candidates
                (a float32 pass is about 1.3x faster per encode at n = 200 and needs no
                float64 copy; results agree with a float64 pass to float32 round-off).
                With ``predictive="mixture"``: float64 when `train_X` is float64 (a
                float32 network is then evaluated by a float64 copy it holds: gradient-
                based acquisition optimisation sees no float32 round-off, so L-BFGS-B
                line searches do not fail on it), else the network's own dtype.
            ensemble_size: Average the predictive over this many input symmetries of
                the prior (permutations and reflections of the input dimensions, the
                identity first; see :mod:`botorch_community.pfn.symmetries`). Each
                member is one more pass of the network (and one more cached context),
                so a call costs about `ensemble_size` times as much. The default
                network's mean test NLL on prior data improves by about 0.01 nats with
                2 members and 0.02 with 4 (``benchmarks/quality_nll.py --ensemble``).
                Capped at the number of distinct maps, `d! 2^d` (2 for `d = 1`).
            warp_targets: Map the targets to the network's space with a monotone
                warp fitted to them (:class:`~botorch_community.pfn.target_map.TargetMap`:
                standardisation, then a sinh-arcsinh transform where it makes the
                context markedly more Gaussian), so skewed contexts whose best values
                lie many standard deviations above their mean keep their extremes in
                the dense part of the network's buckets. The predictive is mapped back
                exactly (still a bar distribution in user units). False: standardise
                only.
            predictive: ``"gp"``: the GP head's mixture alone (the network proposes
                and weights GP hyperparameter particles from the context, refined on
                the data; test points skip the transformer layers, so a call costs
                about a GP posterior). ``"mixture"``: the network's output (its bar
                distribution with the GP head's mixture mixed in). None (default):
                ``"gp"`` for a network with a GP head (the shipped one), else
                ``"mixture"``. ``"gp"`` is the one measured in BO
                (``benchmarks/RESULTS.md`` section 8) and costs 2-5x less per
                iteration; ``"mixture"`` is 0.2 nats better on prior data. An empty
                context always uses the network's output.
            warm_start: A model on the same network (typically the previous BO
                iteration's, whose context this one extends) that has computed a
                posterior: the GP head's refinement starts from its fitted particles
                (:attr:`fitted_particles`) and takes ``gp_refine_warm_steps`` (6)
                Adam steps instead of ``gp_refine_steps`` (30) from the network's
                proposals: the encode costs about a fifth at n = 100-200. With the
                default predictive it also reuses the warm start's particle weight
                logits while the context has grown by at most the network's
                ``gp_reuse_logits_growth`` since its last network pass, and then skips
                the network pass altogether.
        """
        super().__init__()
        # the shipped network (or a checkpoint) is loaded where the data lives
        network = _as_network(model, checkpoint_url, train_X.device, dim=train_X.shape[-1])
        self._validate_training_data(train_X, train_Y, network)
        if train_Yvar is not None:
            self._validate_train_Yvar(train_Yvar, train_Y)
            if not network.noise_hint:
                logger.debug("train_Yvar is ignored: the network takes no noise hints.")
        # Inference only: gradients flow to the test inputs, never to the weights.
        network.requires_grad_(False)
        self._shared = _SharedNetwork(network)
        self.train_X = train_X
        self.train_Y = train_Y
        self.train_Yvar = train_Yvar
        # Kept for BoTorch/Ax tooling that expects a likelihood; unused by the PFN.
        # (gpytorch's floor for fixed noise, 1e-3 in float16, so it does not warn.)
        noise = 1e-3 if train_Y.dtype == torch.float16 else 1e-4
        self.likelihood = FixedNoiseGaussianLikelihood(
            noise=torch.full_like(train_Y.squeeze(-1), noise)
        )
        if input_transform is not None:
            with torch.no_grad():  # transforms that learn (e.g. Normalize) learn here
                input_transform.train()
                input_transform(train_X)  # (preprocess_transform would not learn)
            input_transform.eval()
            self.input_transform = input_transform
        self.cache_context = cache_context
        if network_dtype is not None and network_dtype not in (torch.float32, torch.float64):
            why = (
                " (half precision overflows in the GP head's kernel matrices and the "
                "attention's softmin; the weights are stored in float16 but compute in "
                "float32 or float64)"
                if network_dtype.is_floating_point
                else ""
            )
            raise ValueError(
                "network_dtype must be a floating-point dtype, torch.float32 or "
                f"torch.float64; got {network_dtype}{why}."
            )
        self._network_dtype = network_dtype
        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or (
            ensemble_size < 1
        ):
            raise ValueError(f"ensemble_size must be a positive int, got {ensemble_size!r}.")
        d = train_X.shape[-1]
        #: The number of ensemble members used (`ensemble_size`, capped at `d! 2^d`).
        self.ensemble_size = min(ensemble_size, num_input_symmetries(d))
        # `E x d` maps of the members (member 0: the identity)
        self._symmetries = input_symmetries(d, self.ensemble_size)
        self.warp_targets = bool(warp_targets)
        if predictive is None:
            predictive = "gp" if network.gp_head else "mixture"
        if predictive not in ("mixture", "gp"):
            raise ValueError(
                f"predictive must be 'mixture', 'gp' or None, got {predictive!r}."
            )
        if predictive == "gp" and not network.gp_head:
            raise UnsupportedError(
                "predictive='gp' needs a network with a GP head (gp_head=True); this "
                "network has none. Use predictive='mixture'."
            )
        self.predictive = predictive
        self._target_map_key: Optional[tuple] = None  # what `_target_map_value` is fitted to
        self._target_map_value: Optional[TargetMap] = None
        self._copy_verified = False  # see `_network_and_state`
        # believed targets of the last pending set (see `_believed_targets`)
        self._believed_memo: Optional[tuple] = None
        self._kv_cache: Optional[KVCache] = None
        self._cache_key: Optional[_CacheKey] = None  # what `_kv_cache` was encoded from
        self._cache_depth = 0  # nesting level of `cache_training_context()`
        self.num_encodings = 0  # how many times a context was encoded (diagnostics)
        self._fitted_particles: Optional[Tensor] = None  # see `fitted_particles`
        self._fitted_prior_logits: Optional[PriorLogits] = None  # see `fitted_prior_logits`
        self._gp_init: Optional[Tensor] = None  # where the GP refinement starts
        self._gp_init_logits: Optional[PriorLogits] = None  # the warm start's logits
        self._gp_borders_memo: Optional[tuple] = None  # see `_checked_gp_borders`
        self._context_memo: Optional[tuple] = None  # see `_context`
        self.warm_start_from(*self._warm_start_state(warm_start, network))
        self._warned_outside_cube = False
        #: Condition also on every observed input as a noise-free row at the predictive
        #: mean there (as pending points are): the latent predictive at the observations
        #: then collapses to those means. For plug-in acquisition functions that take the
        #: means at the observations as the known values (``PFNAcquisition``'s qLogEI and
        #: qLogEHVI): a candidate on an observed point then shows no improvement. Only
        #: networks with noise hints can take a row as noise-free; for others it does
        #: nothing.
        self.observations_at_means = False
        if input_transform is None:
            self._warn_outside_cube(train_X, stacklevel=3)

    @staticmethod
    def _warm_start_state(
        warm_start: Optional["PFNModel"], network: PFNTransformer
    ) -> tuple[Optional[Tensor], Optional[PriorLogits]]:
        r"""The fitted particles of `warm_start` (see the argument) and their weight
        logits, or Nones."""
        if warm_start is None:
            return None, None
        if not isinstance(warm_start, PFNModel):
            raise TypeError(
                f"warm_start must be a PFNModel, got {type(warm_start).__name__}."
            )
        if warm_start.pfn is not network:
            raise ValueError(
                "warm_start must use the same network object as this model (its "
                "particles are that network's); pass model=warm_start.pfn or drop "
                "warm_start."
            )
        theta = warm_start.fitted_particles
        if theta is None:
            warnings.warn(
                "warm_start has not computed a posterior with a GP head fit yet (or its "
                "network has no GP head), so there are no particles to start from; the "
                "refinement starts from the network's proposals.",
                UserWarning,
                stacklevel=3,
            )
            return None, None
        return theta, warm_start.fitted_prior_logits

    def warm_start_from(
        self, particles: Optional[Tensor], prior_logits: Optional[PriorLogits] = None
    ) -> None:
        r"""Start the GP head's refinement from `particles` (another model's
        :attr:`fitted_particles` on the same network and `d`; None: from the network's
        proposals), as the `warm_start` argument does. For integrations that cannot pass
        the previous model at construction (Ax). Drops a held cache.

        Args:
            particles: `b x J x (d + 2)` raw particles, or None.
            prior_logits: That model's :attr:`fitted_prior_logits` (with `particles`):
                reused while this context has grown by at most the network's
                ``gp_reuse_logits_growth`` since their network pass (then the default
                predictive needs no network pass).

        Raises:
            ValueError: `particles` are not `b x J x (d + 2)` for this model's `d`, or
                `prior_logits` do not match them.
        """
        if particles is not None:
            d = self.train_X.shape[-1]
            if particles.dim() != 3 or particles.shape[-1] != d + 2:
                raise ValueError(
                    f"The warm-start particles (shape {tuple(particles.shape)}) were fitted "
                    f"to d={particles.shape[-1] - 2} inputs; this model has d={d}."
                )
            particles = particles.detach().clone()
        if prior_logits is not None:
            if particles is None or tuple(prior_logits.logits.shape) != tuple(particles.shape[:2]):
                raise ValueError(
                    "prior_logits must come with the particles they were fitted with (a "
                    "`b x J` logits tensor for `b x J x (d + 2)` particles), got logits of "
                    f"shape {tuple(prior_logits.logits.shape)}."
                )
            prior_logits = PriorLogits(prior_logits.logits.detach().clone(), int(prior_logits.rows))
        self._gp_init = particles
        self._gp_init_logits = prior_logits
        self.clear_cache()

    # ---------------------------------------------------------------- properties
    @property
    def fitted_particles(self) -> Optional[Tensor]:
        r"""The GP head's raw particles fitted to the context of the latest cached
        encode (`b x J x (d + 2)`, `b` the flattened context batch), or None: what
        ``PFNModel(..., warm_start=self)`` starts its refinement from."""
        return self._fitted_particles

    @property
    def fitted_prior_logits(self) -> Optional[PriorLogits]:
        r"""The particles' weight logits of the latest cached encode, with the context
        rows of the network pass they came from (:class:`PriorLogits`), or None: what
        ``PFNModel(..., warm_start=self)`` may reuse (see :meth:`warm_start_from`)."""
        return self._fitted_prior_logits

    def _gp_logits(self) -> Optional[PriorLogits]:
        r"""The warm start's weight logits where this fit reuses them (a single-member
        model with the GP head's predictive whose context has at most
        `1 + gp_reuse_logits_growth` times the rows of their network pass), else None
        (the network's own)."""
        prior, growth = self._gp_init_logits, self.pfn.config.gp_reuse_logits_growth
        if (prior is None or self._gp_init is None or growth <= 0 or self.ensemble_size != 1
                or self.predictive != "gp"):  # fmt: skip
            return None
        return prior if self.train_X.shape[-2] <= (1.0 + growth) * prior.rows else None

    @property
    def pfn(self) -> PFNTransformer:
        r"""The (shared, inference-only) network."""
        return self._shared.network

    @property
    def network_dtype(self) -> torch.dtype:
        r"""The dtype the network computes in for this model (see `network_dtype` in
        the constructor)."""
        if self._network_dtype is not None:
            return self._network_dtype
        if self.train_X.dtype == torch.float64 and self.predictive != "gp":
            return torch.float64
        return self.pfn.dtype

    def _network(self) -> PFNTransformer:
        r"""The shared network computing in :attr:`network_dtype` (a cast copy held by
        the network when that differs from its weights' dtype)."""
        return self._network_and_state()[0]

    def _network_and_state(self) -> tuple[PFNTransformer, tuple]:
        r""":meth:`_network` and the shared network's weights state (one check per
        posterior call: the state keys both the dtype copy and the held cache)."""
        state = self.pfn.weights_state()
        # a model's first use checks a shared dtype copy against the weights themselves
        verify, self._copy_verified = not self._copy_verified, True
        return self.pfn.cast_copy(self.network_dtype, state, verify=verify), state

    @property
    def borders(self) -> Tensor:
        r"""Bucket borders in the network's standardised target space."""
        return self.pfn.borders.to(self.train_X)

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size([])

    @property
    def kv_cache(self) -> Optional[KVCache]:
        r"""The currently held encoded context, if any."""
        return self._kv_cache

    @staticmethod
    def _validate_training_data(
        train_X: Tensor, train_Y: Tensor, network: PFNTransformer
    ) -> None:
        for name, t in (("train_X", train_X), ("train_Y", train_Y)):
            if not t.is_floating_point() or t.dtype == torch.bfloat16:
                raise UnsupportedError(
                    f"{name} has dtype {t.dtype}; PFNModel needs float32 or float64 "
                    "data (float16 works for targets of small magnitude). Convert it, "
                    f"e.g. `{name}.double()`."
                )
        if train_X.dim() != 2:
            raise UnsupportedError(
                f"train_X must be `n x d` (2-dim), got shape {tuple(train_X.shape)}. "
                "Batched training data is not supported by PFNModel."
            )
        if train_Y.dim() != 2 or train_Y.shape[-1] != 1:
            raise UnsupportedError(
                f"train_Y must be `n x 1`, got shape {tuple(train_Y.shape)}. For several "
                "outcomes build one PFNModel per outcome (e.g. a ModelListGP)."
            )
        if train_X.shape[0] != train_Y.shape[0]:
            raise UnsupportedError(
                f"train_X has {train_X.shape[0]} rows but train_Y has "
                f"{train_Y.shape[0]}: they must have the same number of rows."
            )
        if train_X.shape[-1] == 0:
            raise UnsupportedError(
                "train_X has no features (d=0): a PFN predicts from inputs; for a "
                "constant model use train_Y's mean and standard deviation directly."
            )
        if train_X.shape[-1] > network.num_features:
            raise UnsupportedError(
                f"train_X has d={train_X.shape[-1]} features but the network supports at "
                f"most num_features={network.num_features}. Reduce the dimension or use "
                "a network trained with more features."
            )
        if not torch.isfinite(train_X).all():
            raise ValueError(
                "train_X contains NaN or inf values. Remove or impute those rows."
            )
        if not torch.isfinite(train_Y).all():
            raise ValueError(
                "train_Y contains NaN or inf values. Remove those rows (pending points "
                "go in `pending_X`, not as NaN targets)."
            )
        if train_Y.numel() > 1 and not torch.isfinite(train_Y.std()):
            raise ValueError(
                f"train_Y's spread overflows {train_Y.dtype} (largest |y| "
                f"{train_Y.abs().max().item():.3g}): divide train_Y by a constant scale "
                "(e.g. its largest magnitude) before building the model."
            )
        if network.max_context is not None and train_X.shape[0] > network.max_context:
            n = train_X.shape[0]
            warnings.warn(
                f"{n} training rows exceed the {network.max_context} rows this network "
                "was trained on: its predictions there are unmeasured, and encoding "
                "them takes long (one CPU thread: about 1 s at n = 1000, growing "
                "faster than n squared). To stay within what it was trained on, keep a "
                "selection: `idx = select_context_rows(train_X, train_Y, "
                f"{network.max_context})` (botorch_community.models.context_selection: "
                "the best, the most recent and a space-filling spread of the rest), "
                "then `PFNModel(train_X[idx], train_Y[idx])`.",
                RuntimeWarning,
                stacklevel=3,
            )

    @staticmethod
    def _validate_train_Yvar(train_Yvar: Tensor, train_Y: Tensor) -> None:
        if train_Yvar.shape != train_Y.shape:
            raise UnsupportedError(
                f"train_Yvar must have the shape of train_Y {tuple(train_Y.shape)}, got "
                f"{tuple(train_Yvar.shape)}."
            )
        known = train_Yvar[~torch.isnan(train_Yvar)]
        if not bool(torch.isfinite(known).all()) or bool((known < 0).any()):
            raise ValueError(
                "train_Yvar must hold non-negative noise variances (0: noise-free, NaN: "
                "unknown); it contains negative or infinite values."
            )

    def _gp_borders(self, ctx: "_Context") -> Optional[Tensor]:
        r"""The borders (network space) of the GP-only predictive (None: the
        network's output on its own borders).

        With ``predictive="gp"`` and a non-empty context, the GP head's mixture is
        discretised on :data:`GP_NUM_BUCKETS` equal buckets spanning the context's
        targets with :data:`GP_BORDER_MARGIN` on each side (the predictive's resolution
        is then the same everywhere, the incumbent included), plus one wide bucket on
        each side, out to :data:`GP_TAIL_MARGIN`.
        """
        if self.predictive != "gp" or ctx.X.shape[-2] == 0:
            return None
        y = ctx.Y[~torch.isnan(ctx.Y)]
        lo, hi = (y.min(), y.max()) if y.numel() else (ctx.Y.new_zeros(()), ctx.Y.new_zeros(()))
        inner = torch.linspace(0.0, 1.0, GP_NUM_BUCKETS - 1, dtype=y.dtype, device=y.device)
        inner = (lo - GP_BORDER_MARGIN) + (hi - lo + 2 * GP_BORDER_MARGIN) * inner
        tails = torch.stack([lo - GP_TAIL_MARGIN, hi + GP_TAIL_MARGIN])
        return torch.cat([tails[:1], inner, tails[1:]])


    def _checked_gp_borders(self, ctx: "_Context", like: Tensor, reuse: bool) -> Optional[Tensor]:
        r""":meth:`_gp_borders` in `like`'s dtype and device, checked to map to valid
        user-unit borders; with `reuse` (no pending points: the context's targets are
        those of its target map) remembered per target map, so repeated posterior calls
        skip the work."""
        key = (ctx.target_map, like.dtype, like.device)
        memo = self._gp_borders_memo
        if reuse and memo is not None and memo[0][0] is key[0] and memo[0][1:] == key[1:]:
            return memo[1]
        gp_borders = self._gp_borders(ctx)
        if gp_borders is not None:
            gp_borders = gp_borders.to(like)
            _check_borders(ctx.target_map.inverse(gp_borders), ctx.target_map)
        if reuse:
            self._gp_borders_memo = (key, gp_borders)
        return gp_borders

    @property
    def _conditions_on_means(self) -> bool:
        r"""Whether :attr:`observations_at_means` applies (a network with noise hints)."""
        return self.observations_at_means and self.pfn.noise_hint and PENDING_NOISE_FREE

    @property
    def uses_noise_hint(self) -> bool:
        r"""Whether the network conditions on `train_Yvar` (given, and the network was
        trained with noise hints)."""
        return self.train_Yvar is not None and self.pfn.noise_hint

    # Transforms are applied on the fly; BoTorch's train/eval hooks for GP training
    # inputs do not apply.
    def _set_transformed_inputs(self) -> None:
        pass

    def _revert_to_original_inputs(self) -> None:
        pass

    # ------------------------------------------------------------------- context
    def target_map(self, negate_train_ys: bool = False) -> TargetMap:
        r"""The map from user targets to the network's space for the current
        training targets (fitted once per change of `train_Y`; see `warp_targets`)."""
        Y = self.train_Y
        key = (id(Y), Y._version, Y.data_ptr(), Y.shape, negate_train_ys, self.warp_targets)
        if self._target_map_key != key:
            with torch.no_grad():
                self._target_map_value = TargetMap.fit(-Y if negate_train_ys else Y,
                                                       warp=self.warp_targets)  # fmt: skip
            self._target_map_key = key
        return self._target_map_value

    def _context(self, pending_X: Optional[Tensor], negate_train_ys: bool) -> "_Context":
        r"""The network's context: transformed inputs, targets in the network's space
        and, for a network with noise hints, the known noise variances in that space.

        Built once and reused while what it is built from stays the same (the same
        tensors, unedited: :func:`_tensors_state`), so a posterior call in the steady
        state does no work and no host sync for it.

        Returns:
            A :class:`_Context`: `X` (`n' x d`), `Y` (`n' x 1`; pending rows: believed
            targets),
            `Yvar` (`n' x 1` or None), and the :class:`TargetMap` between user units
            and the network's space.
        """
        sources, state = self._context_sources(pending_X)
        other = (negate_train_ys, self.warp_targets, PENDING_NOISE_FREE, self.training,
                 self._conditions_on_means,
                 getattr(self, "input_transform", self).training,
                 None if pending_X is None else self.pfn.weights_state())  # fmt: skip
        memo = self._context_memo  # (sources, their state, other, context)
        if (
            memo is not None
            and len(memo[0]) == len(sources)
            and all(a is b for a, b in zip(memo[0], sources))
            and memo[1] == state
            and memo[2] == other
        ):
            return memo[3]
        ctx = self._build_context(pending_X, negate_train_ys)
        # the memo holds the sources themselves: their ids cannot be reused meanwhile
        self._context_memo = (sources, state, other, ctx)
        return ctx

    def _context_sources(self, pending_X: Optional[Tensor] = None) -> tuple[tuple, tuple]:
        r"""What the context is built from (the data tensors and the input transform,
        compared by identity) and the state of their values (:func:`_tensors_state`;
        the transform's buffers and parameters by storage and version: BoTorch's
        transforms re-wrap their buffers on every call)."""
        sources = (self.train_X, self.train_Y, self.train_Yvar, pending_X)
        state = _tensors_state(sources)
        if hasattr(self, "input_transform"):
            tf = self.input_transform
            sources = sources + (tf,)
            state = state + _tensors_state((*tf.buffers(), *tf.parameters()))
        return sources, state

    def _build_context(self, pending_X: Optional[Tensor], negate_train_ys: bool) -> "_Context":
        r"""The :meth:`_context`, computed."""
        if self._conditions_on_means:  # the observed inputs as noise-free rows too
            pending_X = self.train_X if pending_X is None else torch.cat([self.train_X, pending_X])
        with torch.no_grad():
            train_X = self.train_X
            if hasattr(self, "input_transform"):
                train_X = self.input_transform.preprocess_transform(train_X)
            train_Y = -self.train_Y if negate_train_ys else self.train_Y
            tmap = self.target_map(negate_train_ys)
            ctx_Y = tmap.forward(train_Y)
            ctx_Yvar = None
            if self.uses_noise_hint:
                ctx_Yvar = tmap.variance_forward(train_Y, self.train_Yvar.to(ctx_Y))
            if pending_X is not None:
                pending_X = self._check_pending(pending_X)
                if hasattr(self, "input_transform"):
                    pending_X = self.input_transform(pending_X)
                pending_X = pending_X.to(train_X)
                believed = self._believed_targets(
                    train_X, ctx_Y, ctx_Yvar, pending_X, tmap, negate_train_ys
                )  # n_pending x 1, network space
                if self.pfn.noise_hint and PENDING_NOISE_FREE:
                    # the believed value is the latent function's mean there: a noise-free
                    # row (the observed rows' noise stays as it was: unknown, or given)
                    if ctx_Yvar is None:
                        ctx_Yvar = torch.full_like(ctx_Y, float("nan"))
                    ctx_Yvar = torch.cat([ctx_Yvar, torch.zeros_like(believed)], dim=-2)
                elif ctx_Yvar is not None:
                    ctx_Yvar = torch.cat(
                        [ctx_Yvar, self._typical_Yvar(ctx_Yvar, believed)], dim=-2
                    )
                train_X = torch.cat([train_X, pending_X], dim=-2)
                ctx_Y = torch.cat([ctx_Y, believed], dim=-2)
        return _Context(train_X, ctx_Y, ctx_Yvar, tmap)

    def _believed_targets(
        self,
        ctx_X: Tensor,
        ctx_Y: Tensor,
        ctx_Yvar: Optional[Tensor],
        pending_X: Tensor,
        tmap: TargetMap,
        negate_train_ys: bool,
    ) -> Tensor:
        r"""Targets for pending points: the predictive mean given the observed rows.

        A pending point enters the context with its predictive mean as target
        ("kriging believer"): the predictive there then collapses, so EI near a point
        already under evaluation drops and batches spread out (a row with a missing
        target would be ignored by the network). The means are computed once per
        pending set (a separate encode that leaves the model's cache alone) and reused
        while the pending points, the training data and the network stay the same.

        Args:
            ctx_X: `n x d` transformed training inputs.
            ctx_Y: `n x 1` training targets in the network's space.
            ctx_Yvar: `n x 1` noise hints in the network's space, or None.
            pending_X: `n_pending x d` transformed pending inputs.
            tmap: The context's :class:`TargetMap`.
            negate_train_ys: Whether the targets are negated.

        Returns:
            `n_pending x 1` targets in the network's space.
        """
        if pending_X.shape[-2] == 0:
            return ctx_Y.new_zeros(0, 1)
        net, state = self._network_and_state()
        memo = self._believed_memo  # (context key, negate_train_ys, pending_X, believed)
        if (
            memo is not None
            and memo[1] == negate_train_ys
            and memo[2].shape == pending_X.shape
            and torch.equal(memo[2], pending_X)
            and memo[0].matches(net, state, ctx_X, ctx_Y, ctx_Yvar)
        ):
            return memo[3]
        gp_borders = self._gp_borders(_Context(ctx_X, ctx_Y, ctx_Yvar, tmap))
        with _eval_mode(self.pfn):
            cache = net.encode_context(ctx_X, ctx_Y, train_Yvar=ctx_Yvar, gp_init=self._gp_init,
                                       gp_logits=self._gp_logits(),
                                       network_states=gp_borders is None)  # fmt: skip
            # `n_pending x 1 x d`: each pending point alone (no test-test attention)
            if gp_borders is not None and cache.gp_fit is not None:
                # the latent function's mean (the row is noise-free), exact: E[h(t)]
                mix = net.predict_gp_mixture(pending_X.unsqueeze(-2), cache, False)
                posterior = _user_unit_mixture(mix, tmap, gp_borders, ctx_Y)
            else:
                logits = net.predict(pending_X.unsqueeze(-2), cache, gp_borders=gp_borders)
                borders = self.pfn.borders if gp_borders is None else gp_borders
                posterior = BoundedRiemannPosterior(
                    borders=tmap.inverse(borders.to(ctx_Y)),
                    probabilities=logits.to(ctx_Y).softmax(dim=-1),
                )
        mean = posterior.mean  # n_pending x 1 x 1, user units
        believed = tmap.forward(mean.reshape(-1, 1))
        key = _CacheKey.of(net, state, ctx_X, ctx_Y, ctx_Yvar)
        self._believed_memo = (key, negate_train_ys, pending_X.clone(), believed)
        return believed

    @staticmethod
    def _typical_Yvar(ctx_Yvar: Tensor, like: Tensor) -> Tensor:
        r"""The median known variance (NaN if none is known), shaped like `like`: the
        hint of rows whose noise is not given (pending and conditioning rows)."""
        known = ctx_Yvar[~torch.isnan(ctx_Yvar)]
        value = known.median() if known.numel() else ctx_Yvar.new_tensor(float("nan"))
        return value.expand_as(like).to(like)

    def _check_pending(self, pending_X: Tensor) -> Tensor:
        if pending_X.dim() != 2 or pending_X.shape[-1] != self.train_X.shape[-1]:
            raise UnsupportedError(
                f"pending_X must be `n_pending x d` with d={self.train_X.shape[-1]}, got "
                f"shape {tuple(pending_X.shape)}."
            )
        if not torch.isfinite(pending_X).all():
            raise ValueError("pending_X contains NaN or inf values; drop those points.")
        return pending_X.detach()

    def _cached_context(
        self,
        net: PFNTransformer,
        state: tuple,
        ctx_X: Tensor,
        ctx_Y: Tensor,
        ctx_Yvar: Optional[Tensor] = None,
        network_states: bool = True,
    ) -> KVCache:
        r"""The held cache if it was encoded from this context by this network state
        (and holds the network's keys/values where `network_states` asks for them),
        else a newly encoded one (held).

        The model alone decides staleness: it keeps what it encoded the cache from (the
        context's tensors, the network's train/eval mode, and its weights state
        `state`, computed once per posterior call by :meth:`_network_and_state`) next
        to the cache. With `network_states=False` (the GP head's predictive alone) a
        warm start that reuses its logits skips the network pass
        (:meth:`PFNTransformer.encode_context`); the fit is the same either way.
        """
        held = self._held_cache(net, state, ctx_X, ctx_Y, ctx_Yvar)
        if held is not None and (held.has_network_states or not network_states):
            return held
        self._kv_cache = net.encode_context(ctx_X, ctx_Y, train_Yvar=ctx_Yvar,
                                            gp_init=self._gp_init,
                                            gp_logits=self._gp_logits(),
                                            network_states=network_states)  # fmt: skip
        self._cache_key = _CacheKey.of(net, state, ctx_X, ctx_Y, ctx_Yvar)
        self.num_encodings += 1
        fit = self._kv_cache.gp_fit
        self._fitted_particles = None if fit is None else fit.theta
        self._fitted_prior_logits = None if fit is None else fit.prior_logits
        return self._kv_cache

    def _held_cache(
        self,
        net: PFNTransformer,
        state: tuple,
        ctx_X: Tensor,
        ctx_Y: Tensor,
        ctx_Yvar: Optional[Tensor] = None,
    ) -> Optional[KVCache]:
        r"""The held cache if it was encoded from this context by this network state."""
        key = self._cache_key
        if self._kv_cache is not None and key is not None and key.matches(
            net, state, ctx_X, ctx_Y, ctx_Yvar
        ):
            if not key.same_sources(ctx_X, ctx_Y, ctx_Yvar):  # equal values, new tensors:
                self._cache_key = key.with_sources(ctx_X, ctx_Y, ctx_Yvar)  # no compare again
            return self._kv_cache
        return None

    def replay_state(self) -> Optional[tuple]:
        r"""What a replayed (captured) posterior call relies on, for
        :class:`~botorch_community.acquisition.cuda_graph.CUDAGraphAcquisitionFunction`:
        the held cache, the network's weights, and the training data and input
        transform the context was built from. A capture made under one state is valid
        exactly while this returns an equal tuple (its items compare by identity and
        version counters, with no host sync).

        Returns:
            The state, or None when nothing is cached (outside
            :meth:`cache_training_context`, or before the first posterior call in it):
            then every call re-encodes and nothing may be replayed.
        """
        if not self._caching or self._kv_cache is None:
            return None
        sources, state = self._context_sources()
        return (
            _Same(self._kv_cache), _Same(self._context_memo), self.training,
            self.pfn.weights_state(), tuple(_Same(t) for t in sources), state,
        )  # fmt: skip

    @property
    def _caching(self) -> bool:
        return self.cache_context or self._cache_depth > 0

    @contextmanager
    def cache_training_context(self) -> Iterator["PFNModel"]:
        r"""Encode the training context once for every posterior call in the block.

        The context is encoded lazily at the first posterior call (pending points are
        only known then) and re-encoded only if what it was computed from changes. The
        cache is released on exit of the outermost block, also when the block raises.

        Example:
            >>> with model.cache_training_context():
            ...     candidate, value = optimize_acqf(acqf, bounds, q=1,
            ...                                      num_restarts=16, raw_samples=1024)
        """
        self._cache_depth += 1
        try:
            yield self
        finally:
            self._cache_depth -= 1
            if self._cache_depth == 0:
                self.clear_cache()

    def clear_cache(self) -> None:
        r"""Drop the held encoded context (it is re-encoded on the next call)."""
        self._kv_cache = None
        self._cache_key = None
        self._believed_memo = None
        self._context_memo = None

    # ----------------------------------------------------------------- posterior
    def _prepare_X(self, X: Tensor) -> Tensor:
        d = self.train_X.shape[-1]
        if X.dim() == 0 or X.shape[-1] != d:
            raise UnsupportedError(
                f"X must have shape `b? x q? x d` with d={d} (the training inputs' "
                f"dimension), got {tuple(X.shape)}."
            )
        if X.dim() == 1:
            X = X.unsqueeze(0)
        X_t = self.transform_inputs(X)
        # one host sync for both checks (none under `deferred_checks`, e.g. graph capture)
        finite = torch.isfinite(X.detach()).all() & torch.isfinite(X_t.detach()).all()
        check_or_defer(finite, lambda: self._non_finite_input_error(X))
        if not hasattr(self, "input_transform") and not deferring_checks():
            self._warn_outside_cube(X_t, stacklevel=5)
        return X_t

    def _non_finite_input_error(self, X: Tensor) -> ValueError:
        if not torch.isfinite(X.detach()).all():
            return ValueError(
                "X contains NaN or inf values; the posterior is only defined at finite "
                "inputs."
            )
        return ValueError(
            f"The input transform {type(self.input_transform).__name__} maps finite "
            "X to NaN or inf (e.g. a log of non-positive inputs, or bounds of zero "
            "width); check its bounds against X."
        )

    def _warn_outside_cube(self, X: Tensor, stacklevel: int) -> None:
        r"""Warn (once per model) about inputs outside the unit cube."""
        if self._warned_outside_cube:
            return
        with torch.no_grad():
            outside = bool(((X < -1e-6) | (X > 1 + 1e-6)).any())
        if outside:
            self._warned_outside_cube = True
            warnings.warn(
                "Inputs lie outside the unit cube [0, 1]^d the PFN was trained on. "
                "Pass `input_transform=Normalize(d, bounds=bounds)`.",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def pfn_logits(
        self,
        X: Tensor,
        pending_X: Optional[Tensor] = None,
        negate_train_ys: bool = False,
        observation_noise: bool = True,
    ) -> tuple[Tensor, Tensor]:
        r"""Logits of the predictive bar distribution at `X`, and its borders.

        Args:
            X: `b? x q x d` untransformed inputs (at least 2-dim).
            pending_X: `n_pending x d` points under evaluation (believed targets).
            negate_train_ys: Model the negated targets.
            observation_noise: The predictive of a noisy observation (True) or, with
                ``predictive="gp"``, of the latent function (False). The network's full
                output (``"mixture"``) is always that of an observation.

        Returns:
            `logits` (`b? x q x K`, in `X`'s dtype and device) and the `K + 1` bucket
            borders in user units (the network's borders, or with ``predictive="gp"``
            those of :meth:`_gp_borders`, mapped by the context's :class:`TargetMap`).
        """
        mixture = self._mixture_posterior(X, pending_X, negate_train_ys, observation_noise)
        if mixture is not None:  # the GP head's mixture on its own borders
            return mixture.probabilities.log(), mixture.borders
        if not X.is_floating_point():  # e.g. integer grids: the training inputs' dtype
            X = X.to(self.train_X)
        X_t = self._prepare_X(X)
        ctx = self._context(pending_X, negate_train_ys)
        borders = ctx.target_map.inverse(self.pfn.borders.to(X))
        _check_borders(borders, ctx.target_map)
        if self.ensemble_size > 1:
            return self._ensemble_logits(X_t, ctx).to(X), borders
        with _eval_mode(self.pfn):
            net, state = self._network_and_state()
            if self._caching:
                cache = self._cached_context(net, state, ctx.X, ctx.Y, ctx.Yvar)
                logits = net.predict(X_t, cache)
            else:
                # Reference path: the context goes with every test batch element.
                X_b = X_t.reshape(-1, *X_t.shape[-2:])  # `b x q x d`
                b = X_b.shape[0]
                Yvar = None if ctx.Yvar is None else ctx.Yvar.expand(b, *ctx.Yvar.shape)
                logits = net(
                    ctx.X.expand(b, *ctx.X.shape), ctx.Y.expand(b, *ctx.Y.shape), X_b,
                    train_Yvar=Yvar,
                    gp_init=self._gp_init,
                    gp_logits=self._gp_logits(),
                ).reshape(*X_t.shape[:-1], -1)
                self.num_encodings += 1
        return logits.to(X), borders

    def _mixture_posterior(
        self,
        X: Tensor,
        pending_X: Optional[Tensor] = None,
        negate_train_ys: bool = False,
        observation_noise: bool = True,
    ) -> Optional[GaussianMixtureRiemannPosterior]:
        r"""The GP head's predictive at `X` as a Gaussian mixture (``predictive="gp"``
        and a non-empty context; else None), in the user's units.

        The mixture lives on the network's target axis; the context's
        :class:`TargetMap` takes it to the user's units (affine, or the inverse warp),
        and its buckets are those of :meth:`_gp_borders`.

        Args:
            X: `b? x q x d` untransformed inputs (at least 2-dim).
            pending_X, negate_train_ys, observation_noise: See :meth:`pfn_logits`.

        Returns:
            A `b? x q` :class:`GaussianMixtureRiemannPosterior` (in `X`'s dtype), or
            None.
        """
        if self.predictive != "gp":
            return None
        if not X.is_floating_point():  # e.g. integer grids: the training inputs' dtype
            X = X.to(self.train_X)
        X_t = self._prepare_X(X)
        ctx = self._context(pending_X, negate_train_ys)
        gp_borders = self._checked_gp_borders(
            ctx, X, pending_X is None and not self._conditions_on_means
        )
        if gp_borders is None:
            return None
        mix = self._gp_mixture(X_t, ctx, observation_noise)  # `b? x q x J` fields
        return _user_unit_mixture(mix, ctx.target_map, gp_borders, X)

    def _gp_mixture(self, X_t: Tensor, ctx: "_Context", observation_noise: bool) -> GPMixture:
        r"""The GP head's mixture at transformed inputs `X_t` (`b? x q x d`).

        With `ensemble_size = E > 1` the members' mixtures (each on its own input
        symmetry of the data) are one mixture of `E J` components, each member's
        weights divided by `E`.

        Returns:
            A :class:`GPMixture` with `b? x q x J'` fields (float64, network units).
        """
        E = self.ensemble_size
        N, (q, d) = math.prod(X_t.shape[:-2]), X_t.shape[-2:]
        X_b = X_t.reshape(N, q, d)
        ctx_X, ctx_Y, ctx_Yvar, init = ctx.X, ctx.Y, ctx.Yvar, self._gp_init
        if E > 1:
            perms, flips = self._symmetries
            X_b = apply_input_symmetries(X_b, perms, flips)  # `E x N x q x d`
            ctx_X = apply_input_symmetries(ctx_X, perms, flips).unsqueeze(1)  # `E x 1 x n x d`
            ctx_Y = ctx_Y.expand(E, 1, *ctx_Y.shape)  # `E x 1 x n x 1`
            ctx_Yvar = None if ctx_Yvar is None else ctx_Yvar.expand(E, 1, *ctx_Yvar.shape)
            if init is not None:  # `E x 1 x J x (d + 2)`: one per member
                init = init.unsqueeze(1)
        with _eval_mode(self.pfn):
            net, state = self._network_and_state()
            if self._caching:
                cache = self._cached_context(net, state, ctx_X, ctx_Y, ctx_Yvar,
                                             network_states=False)  # fmt: skip
                mix = net.predict_gp_mixture(X_b, cache, observation_noise)
            else:
                # Reference path: the context goes with every test batch element.
                lead = X_b.shape[:-2]  # `N` or `E x N`
                n = ctx_X.shape[-2]
                expand = lambda t: t.expand(*lead, *t.shape[-2:])  # noqa: E731
                if init is not None:
                    init = init.expand(*lead, *init.shape[-2:]).reshape(-1, *init.shape[-2:])
                logits = self._gp_logits()
                if logits is not None:  # as `init`: one per test batch element
                    J = logits.logits.shape[-1]
                    logits = logits._replace(logits=logits.logits.expand(*lead, J).reshape(-1, J))
                mix = net.gp_mixture(
                    expand(ctx_X), expand(ctx_Y), X_b,
                    train_Yvar=None if ctx_Yvar is None else expand(ctx_Yvar),
                    observation_noise=observation_noise,
                    gp_init=init,
                    gp_logits=logits,
                )  # fmt: skip
                self.num_encodings += 1
        if E > 1:  # `E x N x q x J` -> `N x q x (E J)`
            mix = GPMixture(*(t.permute(1, 2, 0, 3).reshape(N, q, E * t.shape[-1]) for t in mix))
            mix = mix._replace(log_weights=mix.log_weights - math.log(E))
        return GPMixture(*(t.reshape(*X_t.shape[:-1], t.shape[-1]) for t in mix))

    def _ensemble_logits(self, X_t: Tensor, ctx: "_Context") -> Tensor:
        r"""Logits of the ensemble's averaged bar distribution (see `ensemble_size`),
        for the network's full output (the GP head's predictive: :meth:`_gp_mixture`).

        Args:
            X_t: `b? x q x d` transformed inputs.
            ctx: The context from :meth:`_context`.

        Returns:
            `b? x q x K` logits: the log of the members' mean probabilities.
        """
        ctx_X, ctx_Y, ctx_Yvar = ctx.X, ctx.Y, ctx.Yvar
        E = self.ensemble_size
        perms, flips = self._symmetries
        X_b = X_t.reshape(-1, *X_t.shape[-2:])  # `N x q x d`
        N, q, d = X_b.shape
        X_e = apply_input_symmetries(X_b, perms, flips)  # `E x N x q x d`
        ctx_X_e = apply_input_symmetries(ctx_X, perms, flips).unsqueeze(1)  # `E x 1 x n x d`
        ctx_Y_e = ctx_Y.expand(E, 1, *ctx_Y.shape)  # `E x 1 x n x 1`
        Yvar_e = None if ctx_Yvar is None else ctx_Yvar.expand(E, 1, *ctx_Yvar.shape)
        with _eval_mode(self.pfn):
            net, state = self._network_and_state()
            if self._caching:
                # One cached context per member (cache batch `E x 1`): the `N x q` test
                # points of a member are one query sequence against its context.
                cache = self._cached_context(net, state, ctx_X_e, ctx_Y_e, Yvar_e)
                logits = net.predict(X_e, cache)  # `E x N x q x B`
            else:
                n = ctx_X.shape[-2]
                if Yvar_e is not None:
                    Yvar_e = Yvar_e.expand(E, N, n, 1).reshape(E * N, n, 1)
                init = self._gp_init
                if init is not None:  # one per member, for each of its `N` contexts
                    init = init.unsqueeze(1).expand(E, N, *init.shape[1:]).reshape(E * N, *init.shape[1:])
                logits = net(
                    ctx_X_e.expand(E, N, n, d).reshape(E * N, n, d),
                    ctx_Y_e.expand(E, N, n, 1).reshape(E * N, n, 1),
                    X_e.reshape(E * N, q, d),
                    train_Yvar=Yvar_e,
                    gp_init=init,
                ).reshape(E, N, q, -1)
                self.num_encodings += 1
        log_p = torch.logsumexp(logits.log_softmax(dim=-1), dim=0) - math.log(E)
        return log_p.reshape(*X_t.shape[:-1], -1)

    def posterior(
        self,
        X: Tensor,
        output_indices: Optional[list[int]] = None,
        observation_noise: Union[bool, Tensor] = False,
        posterior_transform: Optional[PosteriorTransform] = None,
        pending_X: Optional[Tensor] = None,
        negate_train_ys: bool = False,
        **kwargs: Any,
    ) -> BoundedRiemannPosterior:
        r"""The PFN's predictive distribution at `X`.

        As for BoTorch's GPs, the default is the posterior of the latent function and
        ``observation_noise=True`` adds the noise the model infers (or the known noise
        of ``train_Yvar``): the GP head's predictive (``predictive="gp"``, the default
        for the shipped network) has both. The network's full output
        (``predictive="mixture"``) is trained on noisy targets and is always that of a
        new observation.

        Args:
            X: `b? x q? x d` inputs.
            output_indices: Must be None or `[0]` (single output).
            observation_noise: False (the latent function) or True (a new
                observation). A tensor of noise variances is not supported.
            posterior_transform: A single-output `ScalarizedPosteriorTransform`
                (affine, e.g. weight -1 for minimisation) is applied exactly.
            pending_X: `n_pending x d` points under evaluation; they enter the context
                with their predictive mean as target (see :meth:`_believed_targets`).
            negate_train_ys: Model the negated training targets.

        Returns:
            A `BoundedRiemannPosterior` with `b? x q?` batch of distributions, in the
            user's units. With the GP head's predictive and `q > 1` points it is their
            joint (a :class:`GaussianMixtureRiemannPosterior` with the particles' joint
            covariances, :meth:`_gp_particle_covariances`), so MC acquisitions over
            batches or with ``X_pending`` see the points' coupling, as with a GP.
            With the network's full output the `q` points are independent (their joint:
            :class:`MultivariatePFNModel`).
        """
        if output_indices is not None and list(output_indices) != [0]:
            raise UnsupportedError(
                f"PFNModel has a single output; got output_indices={output_indices}."
            )
        self.eval()
        noisy = _observation_noise_flag(observation_noise)
        posterior = self._mixture_posterior(X, pending_X, negate_train_ys, noisy)
        if posterior is None:  # the network's full output (or an empty context)
            logits, borders = self.pfn_logits(X, pending_X, negate_train_ys, noisy)
            posterior = BoundedRiemannPosterior(
                borders=borders, probabilities=logits.softmax(dim=-1)
            )
        elif X.dim() >= 2 and X.shape[-2] > 1 and X.shape[:-1].numel() > 0:
            cov = self._gp_particle_covariances(X, pending_X, negate_train_ys, noisy)
            if cov is not None:  # the q points' joint, as a GP's posterior is
                posterior = GaussianMixtureRiemannPosterior(
                    posterior.means, posterior.stds, posterior.log_weights,
                    posterior.latent_borders, posterior.outcome_map, covariances=cov,
                )  # fmt: skip
        return _apply_posterior_transform(posterior, posterior_transform)

    def _gp_fit_and_inputs(
        self, X: Tensor, pending_X: Optional[Tensor], negate_train_ys: bool
    ) -> Optional[tuple[Any, Tensor]]:
        r"""`(fit, X_t)`: the GP head's fit of the context and the `N x q x d`
        transformed inputs of `X` (`b? x q x d`), or None where the predictive is not
        the GP head's alone (``predictive="mixture"``, an ensemble, an empty context)."""
        if self.ensemble_size != 1:
            return None
        ctx = self._context(pending_X, negate_train_ys)
        if self._gp_borders(ctx) is None:
            return None
        if not X.is_floating_point():
            X = X.to(self.train_X)
        X_t = self.transform_inputs(X).reshape(-1, *X.shape[-2:])  # `N x q x d`
        with _eval_mode(self.pfn):
            net, state = self._network_and_state()
            if self._caching:
                cache = self._cached_context(net, state, ctx.X, ctx.Y, ctx.Yvar,
                                             network_states=False)  # fmt: skip
            else:
                cache = net.encode_context(ctx.X, ctx.Y, train_Yvar=ctx.Yvar,
                                           gp_init=self._gp_init, gp_logits=self._gp_logits(),
                                           network_states=False)  # fmt: skip
                self.num_encodings += 1
        return cache.gp_fit, X_t

    def _gp_particle_covariances(
        self,
        X: Tensor,
        pending_X: Optional[Tensor] = None,
        negate_train_ys: bool = False,
        observation_noise: bool = False,
    ) -> Optional[Tensor]:
        r"""The GP head's particles' joint covariances at the `q` points of `X`
        (`b? x q x d`): `b? x J x q x q` on the network's target axis (None: see
        :meth:`_gp_fit_and_inputs`).

        They make the posterior of a batch joint (exact draws of the particles' joint
        Gaussians, :class:`GaussianMixtureRiemannPosterior`), so MC acquisitions
        (``qLogEI`` with `q > 1`, or with ``X_pending``) see that two copies of one
        point cannot both improve, and that a point beside a pending one gains little.
        """
        found = self._gp_fit_and_inputs(X, pending_X, negate_train_ys)
        if found is None:
            return None
        fit, X_t = found
        _, cov = self.pfn.gp.particle_joints(fit, X_t, observation_noise)  # `N x J x q x q`
        return cov.to(X.dtype if X.is_floating_point() else self.train_X.dtype).reshape(
            *X.shape[:-2], *cov.shape[-3:]
        )

    def _gp_correlation(
        self,
        X: Tensor,
        pending_X: Optional[Tensor] = None,
        negate_train_ys: bool = False,
        observation_noise: bool = False,
    ) -> Optional[Tensor]:
        r"""The `b? x q x q` correlation of the GP head's mixture at the `q` points of
        `X` (`b? x q x d`), projected onto the valid correlation matrices (None: see
        :meth:`_gp_fit_and_inputs`)."""
        found = self._gp_fit_and_inputs(X, pending_X, negate_train_ys)
        if found is None:
            return None
        fit, X_t = found
        R = self.pfn.gp.mixture_correlation(fit, X_t, observation_noise)
        return _nearest_correlation(R.to(X_t)).reshape(*X.shape[:-2], X.shape[-2], X.shape[-2])

    @classmethod
    def construct_inputs(cls, training_data: Any, **model_options: Any) -> dict:
        r"""Model kwargs from a ``SupervisedDataset`` and options (Ax: the
        ``ModelConfig.model_options``): ``network`` ("default", a local checkpoint path
        or a name given to ``register_network``; the network is loaded once per process
        and shared, see :func:`botorch_community.pfn.networks.load_network`),
        ``checkpoint_url`` (alias), ``model`` (a ``PFNTransformer``), ``cache_context``,
        ``input_transform``, ``network_dtype`` (``"float32"``/``"float64"``),
        ``ensemble_size``. Unknown options raise ``UnsupportedError``. No Ax needed;
        see :mod:`botorch_community.models._model_options`.
        """
        return construct_pfn_inputs(cls, training_data, **model_options)

    # ---------------------------------------------------------- model utilities
    def subset_output(self, idcs: list[int]) -> "PFNModel":
        if list(idcs) != [0]:
            raise UnsupportedError(f"PFNModel has a single output; cannot subset {idcs}.")
        return self

    def condition_on_observations(
        self, X: Tensor, Y: Tensor, **kwargs: Any
    ) -> "PFNModel":
        r"""A new model (sharing the network) with `X`, `Y` appended to the data.

        Args:
            X: `m x d` new inputs (untransformed).
            Y: `m x 1` new targets.
        """
        d = self.train_X.shape[-1]
        if X.dim() != 2 or Y.dim() != 2 or X.shape[-1] != d or Y.shape[-1] != 1:
            raise UnsupportedError(
                f"PFNModel.condition_on_observations takes `m x d` X (d={d}) and `m x 1`"
                f" Y, got shapes {tuple(X.shape)} and {tuple(Y.shape)}; batched "
                "conditioning (fantasies) is not supported."
            )
        tf = getattr(self, "input_transform", None)
        train_Yvar = self.train_Yvar
        if train_Yvar is not None:  # the new rows: `noise` if given, else the median
            noise = kwargs.get("noise")
            if noise is None:
                noise = self._typical_Yvar(train_Yvar, Y)
            train_Yvar = torch.cat([train_Yvar, noise.to(train_Yvar).expand_as(Y)], dim=0)
        new = self.__class__(
            train_X=torch.cat([self.train_X, X.to(self.train_X)], dim=0),
            train_Y=torch.cat([self.train_Y, Y.to(self.train_Y)], dim=0),
            train_Yvar=train_Yvar,
            model=self.pfn,
            # A copy: a transform that learns (Normalize) must not change this model's.
            input_transform=copy.deepcopy(tf) if tf is not None else None,
            cache_context=self.cache_context,
            network_dtype=self._network_dtype,
            ensemble_size=self.ensemble_size,
            warp_targets=self.warp_targets,
            predictive=self.predictive,
        )
        return new

    def fantasize(self, *args: Any, **kwargs: Any) -> Model:
        raise UnsupportedError(
            "PFNModel does not support fantasize(); use the discretized acquisition "
            "functions or MC acquisition functions that do not fantasize."
        )


class _Context(NamedTuple):
    r"""The network's view of the training data (see :meth:`PFNModel._context`)."""

    X: Tensor  # `n x d` transformed inputs (pending rows last)
    Y: Tensor  # `n x 1` standardised targets (pending rows: believed)
    Yvar: Optional[Tensor]  # `n x 1` known noise variances, standardised (noise hints)
    target_map: TargetMap  # user units <-> the network's space


#: Pending points enter the context as noise-free rows at their believed (mean) values,
#: for networks with noise hints: the latent function is then pinned there, so EI beside a
#: pending point drops and batches spread (as noisy rows with the particles' inferred
#: noise, a q = 4 batch in Ax had points 0.005 apart, against the GP's 0.025).
PENDING_NOISE_FREE = True

#: Buckets of the GP-only predictive (``predictive="gp"``).
GP_NUM_BUCKETS = 1000
#: Its equal buckets extend this far (network units: standard deviations of the
#: context's warped targets) beyond the context's smallest and largest target ...
GP_BORDER_MARGIN = 4.0
#: ... and its two outer buckets this far (a Gaussian of the mixture is never wider
#: than a few units: beyond, no mass is lost).
GP_TAIL_MARGIN = 40.0


class _CacheKey(NamedTuple):
    r"""What a model's held :class:`KVCache` was encoded from."""

    X: Tensor  # `... x n x d` context inputs
    Y: Tensor  # `... x n x 1` standardised targets (pending rows: believed)
    Yvar: Optional[Tensor]  # standardised noise hints, or None
    training: bool  # the network's mode
    state: tuple  # the shared network's weights state
    sources: tuple  # the tensors the copies were made from, and their `_tensors_state`

    @classmethod
    def of(
        cls, net: torch.nn.Module, state: tuple, X: Tensor, Y: Tensor, Yvar: Optional[Tensor]
    ) -> "_CacheKey":
        r"""The key of a context (copies of its tensors)."""
        sources = (X, Y, Yvar)
        return cls(X.clone(), Y.clone(), None if Yvar is None else Yvar.clone(),
                   net.training, state, (sources, _tensors_state(sources)))  # fmt: skip

    def matches(
        self, net: torch.nn.Module, state: tuple, X: Tensor, Y: Tensor, Yvar: Optional[Tensor]
    ) -> bool:
        r"""Whether a context and network state are the ones this key was made from.

        The very tensors the key was made from, unedited, match without a comparison
        of values (no host sync: the steady state of a cached block, see
        :meth:`PFNModel._context`)."""
        if self.training != net.training or self.state != state:
            return False
        if self.same_sources(X, Y, Yvar):
            return True
        return (
            self.X.shape == X.shape
            and self.X.dtype == X.dtype
            and torch.equal(self.X, X)
            and _equal_with_nan(self.Y, Y)
            and (self.Yvar is None) == (Yvar is None)
            and (Yvar is None or _equal_with_nan(self.Yvar, Yvar))
        )

    def same_sources(self, X: Tensor, Y: Tensor, Yvar: Optional[Tensor]) -> bool:
        r"""Whether `X`, `Y`, `Yvar` are the very tensors the key was made from (or last
        matched), unedited."""
        held, held_state = self.sources
        return (
            held[0] is X and held[1] is Y and held[2] is Yvar
            and held_state == _tensors_state((X, Y, Yvar))
        )  # fmt: skip

    def with_sources(self, X: Tensor, Y: Tensor, Yvar: Optional[Tensor]) -> "_CacheKey":
        r"""This key, matched by identity from now on by `X`, `Y`, `Yvar` (equal in value
        to its own: e.g. the targets rescaled, which leaves the standardised context as
        it was)."""
        sources = (X, Y, Yvar)
        return self._replace(sources=(sources, _tensors_state(sources)))


def _user_unit_mixture(
    mix: GPMixture, tmap: TargetMap, gp_borders: Tensor, like: Tensor
) -> GaussianMixtureRiemannPosterior:
    r"""The GP head's mixture (`... x J` fields, network units) as a posterior in user
    units: the context's target map `tmap` takes the network's axis to the user's (affine,
    or the inverse warp), on the buckets `gp_borders` (network units), in `like`'s dtype."""
    outcome_map = IncreasingOutcomeMap(
        tmap.inverse, tmap.forward,
        base_affine=None if tmap.warped else (tmap.std.to(like), tmap.mean.to(like)),
        base_knots=tmap.latent_knots,
    )  # fmt: skip
    return GaussianMixtureRiemannPosterior(
        means=mix.mean.to(like),
        stds=mix.var.sqrt().to(like),
        log_weights=mix.log_weights.to(like),
        latent_borders=gp_borders.to(like),
        outcome_map=outcome_map,
    )


class _Same:
    r"""An object that compares equal only to a holder of the very same object (and
    keeps it alive, so its id cannot be reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _tensors_state(items: tuple) -> tuple:
    r"""What an in-place edit of the tensors among `items` changes: their version
    counters, storage and shapes (other items contribute nothing)."""
    return tuple(
        (t._version, t.data_ptr(), t.shape) if isinstance(t, Tensor) else None for t in items
    )


def _equal_with_nan(a: Tensor, b: Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@contextmanager
def _eval_mode(net: torch.nn.Module) -> Iterator[None]:
    r"""Run `net` in eval mode, restoring its mode after (it may be shared, e.g. with
    a fine-tuning loop that keeps it in train mode)."""
    was_training = net.training
    if was_training:
        net.eval()
    try:
        yield
    finally:
        if was_training:
            net.train()


def _check_borders(borders: Tensor, tmap: TargetMap) -> None:
    r"""Refuse user-unit bucket borders the dtype cannot represent (they would merge)."""
    with torch.no_grad():
        ok = bool(torch.isfinite(borders).all() and (borders[1:] > borders[:-1]).all())
    if not ok:
        raise ValueError(
            f"The predictive's bucket borders in the units of train_Y (mean "
            f"{tmap.mean.item():.6g}, standard deviation {tmap.std.item():.6g}) cannot be "
            f"represented in {borders.dtype}: the targets' spread is too small for "
            "their magnitude at this precision. Use float64 (train_X, train_Y and X), "
            "or subtract an offset from train_Y."
        )


def _apply_posterior_transform(
    posterior: BoundedRiemannPosterior,
    posterior_transform: Optional[PosteriorTransform],
) -> BoundedRiemannPosterior:
    r"""Apply a single-output affine `ScalarizedPosteriorTransform` exactly.

    `y -> w * y + c` maps buckets to buckets; a negative `w` reverses their order
    (:meth:`BoundedRiemannPosterior.affine`; a multivariate posterior keeps its
    correlation matrix).
    """
    if posterior_transform is None:
        return posterior
    if not isinstance(posterior_transform, ScalarizedPosteriorTransform):
        raise UnsupportedError(
            f"{type(posterior_transform).__name__} is not supported by PFNModel; only a "
            "single-output ScalarizedPosteriorTransform (weight, offset) is."
        )
    weights = posterior_transform.weights
    if weights.numel() != 1:
        raise UnsupportedError(
            "PFNModel has one output; the ScalarizedPosteriorTransform must have one "
            f"weight, got {weights.numel()}."
        )
    w = weights.reshape(()).to(dtype=posterior.dtype, device=posterior.device)
    if w == 0:
        raise UnsupportedError("A zero weight makes the posterior degenerate.")
    return posterior.affine(w, posterior_transform.offset)


class MultivariatePFNModel(PFNModel):
    r"""A PFN model with a joint (Gaussian-copula) posterior over the `q` points.

    Marginals come from the cached context (averaged over the ensemble when
    `ensemble_size > 1`). Correlations come from a conditional forward pass on the
    untransformed inputs (never the ensemble's maps): for each `x_i`, the context is
    extended by `(x_i, c_i)` with `c_i = mu_i + sigma_i` (one marginal standard deviation
    up) and the shift of every other point's predictive mean is read off. For a Gaussian joint,

    .. math::

        E[y_j | y_i = c_i] - \mu_j = \frac{\mathrm{Cov}(y_j, y_i)}{\sigma_i^2}
        (c_i - \mu_i) \Rightarrow \rho_{ij} = \frac{E[y_j | y_i = c_i] - \mu_j}
        {\sigma_j},

    which is symmetrised and projected onto the valid correlation matrices.
    """

    def posterior(
        self,
        X: Tensor,
        output_indices: Optional[list[int]] = None,
        observation_noise: Union[bool, Tensor] = False,
        posterior_transform: Optional[PosteriorTransform] = None,
        pending_X: Optional[Tensor] = None,
        negate_train_ys: bool = False,
        **kwargs: Any,
    ) -> Union[BoundedRiemannPosterior, MultivariateRiemannPosterior]:
        r"""Joint posterior over the `q` points of `X` (`b? x q x d`).

        For `q = 1` (or 1-dim `X`) this equals :meth:`PFNModel.posterior`.
        """
        noisy = _observation_noise_flag(observation_noise)
        marginals = super().posterior(
            X,
            output_indices=output_indices,
            observation_noise=noisy,
            pending_X=pending_X,
            negate_train_ys=negate_train_ys,
        )
        if X.dim() < 2 or X.shape[-2] == 1 or getattr(marginals, "covariances", None) is not None:
            # q = 1, or already the GP head's joint (PFNModel.posterior)
            return _apply_posterior_transform(marginals, posterior_transform)
        if X.shape[:-1].numel() == 0:  # no candidates: an empty joint posterior
            R = marginals.mean.new_zeros(*X.shape[:-1], X.shape[-2])
        else:
            if not X.is_floating_point():
                X = X.to(self.train_X)
            R = self.estimate_correlations(X, marginals, pending_X, negate_train_ys, noisy)
        joint = MultivariateRiemannPosterior(
            borders=marginals.borders,
            probabilities=marginals.probabilities,
            correlation_matrix=R,
        )
        return _apply_posterior_transform(joint, posterior_transform)

    def estimate_correlations(
        self,
        X: Tensor,
        marginals: BoundedRiemannPosterior,
        pending_X: Optional[Tensor] = None,
        negate_train_ys: bool = False,
        observation_noise: bool = True,
    ) -> Tensor:
        r"""Correlation matrix of the `q` points.

        With the GP head's predictive (``predictive="gp"``, the default for the shipped
        network) it is that mixture's own joint correlation
        (:meth:`~botorch_community.pfn.gp_head.GPHead.mixture_correlation`: one batched
        GP posterior; 10x faster than the conditional passes below). Otherwise it is
        estimated from one conditional forward pass per point, which reads the main
        cached context (its first-layer keys/values of the shared rows
        are reused) but never replaces or edits it: the `n + 1`-row contexts live in
        their own, temporary :class:`KVCache`.

        Args:
            X: `b? x q x d` untransformed inputs.
            marginals: The marginal posterior at `X` (`b? x q` batch).
            observation_noise: Correlations of noisy observations (True) or, with the
                GP head's predictive, of the latent function.

        Returns:
            `b? x q x q` correlation matrices.
        """
        R = self._gp_correlation(X, pending_X, negate_train_ys, observation_noise)
        if R is not None:
            # The GP head's mixture is the predictive: its own joint covariance gives the
            # correlations exactly (no conditional network passes).
            return R
        batch_shape, q = X.shape[:-2], X.shape[-2]
        X_t = self.transform_inputs(X).reshape(-1, q, X.shape[-1])  # `b x q x d`
        ctx = self._context(pending_X, negate_train_ys)
        ctx_X, ctx_Y = ctx.X, ctx.Y
        mu = marginals.mean.squeeze(-1).reshape(-1, q)  # `b x q`, user units
        sigma = marginals.variance.squeeze(-1).clamp_min(1e-12).sqrt().reshape(-1, q)
        # Conditioning values in the network's standardised space.
        cond_Y = ctx.target_map.forward(mu + sigma).unsqueeze(-1)
        with _eval_mode(self.pfn):
            net, state = self._network_and_state()
            # (an ensemble's held cache encodes the transformed contexts: not reusable)
            reuse = self._caching and self.ensemble_size == 1
            base = self._cached_context(net, state, ctx_X, ctx_Y, ctx.Yvar) if reuse else None
            extra_Y = cond_Y.unsqueeze(-1)  # `b x q x 1 x 1`
            extra_Yvar = None
            if ctx.Yvar is not None:  # the conditioning rows: the typical known noise
                extra_Yvar = self._typical_Yvar(ctx.Yvar, extra_Y)
            cache = net.extend_context(
                ctx_X, ctx_Y, X_t.unsqueeze(-2), extra_Y, base_cache=base,
                ctx_Yvar=ctx.Yvar, extra_Yvar=extra_Yvar,
            )  # batch `b x q`: context i holds the n rows plus (x_i, c_i)
            gp_borders = self._gp_borders(ctx)  # those of the marginals
            logits = net.predict(X_t.unsqueeze(-3), cache, gp_borders, observation_noise).to(X)
        cond = BoundedRiemannPosterior(
            borders=marginals.borders, probabilities=logits.softmax(dim=-1)
        )
        cond_mean = cond.mean.squeeze(-1)  # `b x q(cond i) x q(eval j)`
        rho = (cond_mean - mu.unsqueeze(-2)) / sigma.unsqueeze(-2)  # rho[i, j]
        rho = 0.5 * (rho + rho.transpose(-1, -2))
        R = _nearest_correlation(rho)
        return R.reshape(*batch_shape, q, q)


def _observation_noise_flag(observation_noise: Union[bool, Tensor]) -> bool:
    r"""``posterior``'s `observation_noise` as a bool (a tensor of noise variances is
    refused: the predictive's noise is the model's own or ``train_Yvar``'s)."""
    if isinstance(observation_noise, Tensor):
        raise UnsupportedError(
            "PFNModel.posterior does not take noise variances as observation_noise; pass "
            "True (a new observation with the noise the model infers or train_Yvar's) "
            "or False (the latent function)."
        )
    return bool(observation_noise)


def _nearest_correlation(A: Tensor, min_eig: float = 1e-6) -> Tensor:
    r"""Map symmetric `... x q x q` matrices to valid correlation matrices.

    Off-diagonal entries are clipped to `[-1, 1]`; matrices whose smallest eigenvalue
    is below `min_eig` are projected (eigenvalues clipped) and rescaled to a unit
    diagonal. Valid matrices pass through unchanged (no eigendecomposition in their
    gradient path, which is ill-conditioned for repeated eigenvalues).
    """
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    A = A.clamp(-1.0, 1.0) * (1 - eye) + eye
    with torch.no_grad():
        needs_projection = torch.linalg.eigvalsh(A).amin(dim=-1) < min_eig
    if not bool(needs_projection.any()):
        return A
    # Project only the invalid matrices, so valid ones keep eigh-free gradients.
    L, Q = torch.linalg.eigh(A[needs_projection])
    P = (Q * L.clamp_min(min_eig).unsqueeze(-2)) @ Q.transpose(-1, -2)
    d = P.diagonal(dim1=-2, dim2=-1).rsqrt()
    A = A.clone()
    A[needs_projection] = P * d.unsqueeze(-1) * d.unsqueeze(-2)
    return A
