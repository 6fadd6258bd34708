#!/usr/bin/env python3
r"""A PFN transformer whose training context can be encoded once and cached.

One token per data row (PFNs4BO style). Training tokens are the sum of an x-encoding
and a y-encoding; test tokens carry the x-encoding only. A learned context token is
prepended to every training set, so an empty training set (`n = 0`) is valid and yields
the prior predictive.

Attention pattern: every token (training or test) attends to the training tokens (and
the context token) only. Test tokens never see each other, so each test prediction is
independent of which other test points share its batch, and the training tokens' keys
and values at each layer do not depend on the test tokens: that is what
:class:`~botorch_community.pfn.kv_cache.KVCache` stores. No `(n + m) x (n + m)` mask is
ever built: the "mask" is simply that keys and values are taken from the context rows.

One layer loop (:meth:`PFNTransformer._run_layers`) serves the reference path (context
and test tokens together), :meth:`~PFNTransformer.encode_context` and
:meth:`~PFNTransformer.extend_context`; :meth:`~PFNTransformer.predict` runs test tokens
against cached keys/values. The output is the decoder's bar distribution, with the GP
head's mixture (:mod:`botorch_community.pfn.gp_head`) mixed in for networks that have it.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn, Tensor

from botorch_community.pfn.bar_distribution import bar_nll, bucket_index
from botorch_community.pfn.config import PFNConfig, resolve_config
from botorch_community.pfn.dtype_copies import DtypeCopies
from botorch_community.pfn.gp_head import GPFit, GPHead, GPMixture, PriorLogits
from botorch_community.pfn.kv_cache import KVCache, to_cache_layout
from botorch_community.pfn.layer import PFNLayer, SqDist

#: Noise hints (``noise_hint``): smaller known variances of the standardised targets
#: count as this one (the smallest noise the GP prior draws, relative to its outputscale;
#: a noise-free objective is passed as 0), and the log-variance feature is
#: `(log v - NOISE_HINT_LOG_CENTER) / NOISE_HINT_LOG_SCALE` (about -1.7 .. 1.7).
NOISE_HINT_MIN_VAR = 1e-6
NOISE_HINT_LOG_CENTER = -7.0
NOISE_HINT_LOG_SCALE = 4.0


def default_borders(num_buckets: int, bound: float = 6.0) -> Tensor:
    r"""Equal-mass bucket borders of a standard normal, with the outer borders at
    `+-bound`.

    Returns:
        A `(num_buckets + 1)`-dim tensor of increasing borders.
    """
    probs = torch.linspace(0.0, 1.0, num_buckets + 1, dtype=torch.float64)[1:-1]
    inner = torch.distributions.Normal(0.0, 1.0).icdf(probs)
    inner = inner.clamp(-bound + 1e-3, bound - 1e-3)
    edges = torch.tensor([-bound], dtype=torch.float64), torch.tensor(
        [bound], dtype=torch.float64
    )
    return torch.cat([edges[0], inner, edges[1]]).float()


#: Queries per chunk in :meth:`PFNTransformer.predict` without gradients (memory bound).
PREDICT_CHUNK_QUERIES = 512
#: The fewest observed targets a context is refined from under ``gp_refine_start_per_dim``.
REFINE_START_MIN = 5


class PFNTransformer(nn.Module):
    r"""A prior-data fitted network over rows `(x, y)` with a cacheable context.

    Example:
        >>> net = PFNTransformer(num_features=6, emsize=64, nlayers=2, nhead=2,
        ...                      nhid=128, num_buckets=100)
        >>> logits = net(train_X, train_Y, test_X)  # reference path
        >>> cache = net.encode_context(train_X[:1], train_Y[:1])
        >>> logits_cached = net.predict(test_X, cache)  # same values
    """

    #: The axis of rows in the network's tokens (`batch x rows x e`).
    _ROW_DIM = -2

    def __init__(
        self,
        config: Optional[PFNConfig] = None,
        *,
        borders: Optional[Tensor] = None,
        **fields: Any,
    ) -> None:
        r"""
        Args:
            config: The architecture and inference settings (see
                :class:`~botorch_community.pfn.config.PFNConfig`); or pass its fields
                as keyword arguments (`PFNTransformer(num_features=6, emsize=64)`).
                With both, the fields override the config's.
            borders: `(num_buckets + 1)` increasing bucket borders in the standardised
                target space. Defaults to equal-mass buckets of a standard normal.
        """
        super().__init__()
        config = self._init_config_and_borders(config, borders, fields)
        if config.tokens != "rows":
            raise ValueError(
                f"PFNTransformer is the row-token network; for tokens="
                f"{config.tokens!r} use botorch_community.pfn.build_network."
            )
        #: Compute the metric term in expanded form (:func:`~.layer.expanded_metric_dist`):
        #: the same function up to round-off, without the `B x q x n x d` squared
        #: differences. A training-speed option (not part of the config).
        self.metric_expanded = False
        e, nf, K = config.emsize, config.num_features, config.num_buckets
        self.x_encoder = nn.Linear(nf, e)
        self.y_encoder = nn.Linear(1, e)
        # Learned embedding added in place of the y-encoding for a missing target
        # (pending points enter the context this way).
        self.nan_y_embedding = nn.Parameter(torch.zeros(e))
        if config.noise_hint:
            # No bias: a row with unknown noise (features 0) gets exactly nothing added.
            self.noise_encoder = nn.Linear(2, e, bias=False)
            nn.init.zeros_(self.noise_encoder.weight)
        # A learned token always present in the context (also makes n = 0 valid).
        self.context_token = nn.Parameter(torch.randn(e) * 0.02)
        metric = nf if config.metric_attention else 0
        self.layers = nn.ModuleList(
            PFNLayer(e, config.nhead, config.nhid, config.dropout, metric)
            for _ in range(config.nlayers)
        )
        self.decoder = nn.Sequential(
            nn.LayerNorm(e), nn.Linear(e, config.nhid), nn.GELU(), nn.Linear(config.nhid, K)
        )
        if config.gp_head:
            self.gp = GPHead(e, nf, config.gp_particles)
        self._dtype_copies = DtypeCopies()

    def _init_config_and_borders(
        self, config: Any, borders: Optional[Tensor], fields: dict[str, Any]
    ) -> PFNConfig:
        r"""Set ``self.config`` (from `config` and/or `fields`, see :meth:`__init__`)
        and register the checked ``borders`` buffer; returns the config."""
        config = resolve_config(config, fields)
        self.config = config
        K = config.num_buckets
        if borders is None:
            borders = default_borders(K)
        borders = torch.as_tensor(borders, dtype=torch.float32)
        if borders.shape != (K + 1,):
            raise ValueError(f"borders must have shape ({K + 1},), got {tuple(borders.shape)}.")
        # (a meta-device instance, built only for its shapes, has no values to check)
        if borders.device.type != "meta" and not bool((borders[1:] > borders[:-1]).all()):
            raise ValueError("borders must be strictly increasing.")
        self.register_buffer("borders", borders)
        return config

    # ---------------------------------------------------------------- settings
    @property
    def num_features(self) -> int:
        return self.config.num_features

    @property
    def num_buckets(self) -> int:
        return self.config.num_buckets

    @property
    def max_context(self) -> Optional[int]:
        return self.config.max_context

    @property
    def metric_attention(self) -> bool:
        return self.config.metric_attention

    @property
    def noise_hint(self) -> bool:
        return self.config.noise_hint

    @property
    def gp_head(self) -> bool:
        return self.config.gp_head

    def set_gp_refinement(
        self,
        steps: int,
        min_context: Optional[int] = None,
        max_rows: Optional[int] = None,
    ) -> None:
        r"""Set the GP head's particle refinement at inference (part of the config, so a
        saved checkpoint records it). Caches built before are stale afterwards (the
        settings are part of :meth:`weights_state`), and ``PFNModel`` rebuilds them.

        Args:
            steps: Adam steps of marginal-likelihood ascent (0: off).
            min_context: Refine contexts with at least this many observed targets
                (unchanged if None).
            max_rows: Refine on at most this many rows per context (unchanged if None).
        """
        if not self.gp_head:
            raise ValueError("This network has no GP head (gp_head=False).")
        if min_context is None:
            min_context = self.config.gp_refine_min_context
        c = self.config
        self.config = c.replace(
            gp_refine_steps=steps,
            gp_refine_min_context=min_context,
            gp_refine_max_rows=c.gp_refine_max_rows if max_rows is None else max_rows,
        )

    # ------------------------------------------------------------------ encoders
    def _check_dim(self, d: int) -> None:
        r"""Raise a clear error for inputs of more than ``num_features`` dimensions."""
        if d > self.num_features:
            raise ValueError(
                f"The inputs have d={d} features but this network supports at most "
                f"num_features={self.num_features}. Reduce the dimension (e.g. fix or "
                "embed some parameters) or use a network trained with more features."
            )

    def encode_x(self, X: Tensor) -> Tensor:
        r"""Embed inputs, zero-padding `d < num_features` and rescaling by
        `num_features / d`.

        Args:
            X: `batch_shape x m x d` inputs (expected in the unit cube).

        Returns:
            `batch_shape x m x emsize` embeddings.
        """
        d = X.shape[-1]
        self._check_dim(d)
        if d == 0:
            return self.x_encoder.bias.expand(*X.shape[:-1], -1)
        X = X * (self.num_features / d)
        # Padding with zeros is the same as using only the first d weight columns.
        return F.linear(X, self.x_encoder.weight[:, :d], self.x_encoder.bias)

    def encode_noise(self, train_Yvar: Tensor) -> Tensor:
        r"""Embedding of known observation-noise variances (see ``noise_hint``).

        The features of a row are `(1, (log max(v, v_min) - c) / s)` for a known
        variance `v` of the standardised target and `(0, 0)` for an unknown one (NaN),
        through a bias-free linear map, so unknown rows get exactly zero. `v_min` is
        :data:`NOISE_HINT_MIN_VAR`, the smallest variance the training prior draws
        (a noise-free objective is passed as `v = 0`).

        Args:
            train_Yvar: `batch_shape x n x 1` noise variances in standardised units.

        Returns:
            `batch_shape x n x emsize`.
        """
        train_Yvar = train_Yvar.to(self.noise_encoder.weight)  # the network's device/dtype
        known = ~torch.isnan(train_Yvar)
        v = torch.nan_to_num(train_Yvar, nan=1.0).clamp_min(NOISE_HINT_MIN_VAR)
        log_v = (v.log() - NOISE_HINT_LOG_CENTER) / NOISE_HINT_LOG_SCALE
        feats = torch.cat([known.to(v.dtype), torch.where(known, log_v, 0.0)], dim=-1)
        return F.linear(feats, self.noise_encoder.weight)

    def _check_noise(self, train_Yvar: Optional[Tensor], train_Y: Tensor) -> None:
        if train_Yvar is None:
            return
        if not self.noise_hint:
            raise ValueError(
                "This network was not trained with noise hints (noise_hint=False); "
                "do not pass train_Yvar to it."
            )
        if train_Yvar.shape != train_Y.shape:
            raise ValueError(
                f"train_Yvar must have the shape of train_Y {tuple(train_Y.shape)}, got "
                f"{tuple(train_Yvar.shape)}."
            )

    def encode_rows(
        self, train_X: Tensor, train_Y: Tensor, train_Yvar: Optional[Tensor] = None
    ) -> Tensor:
        r"""Tokens of context rows `(x, y)` (without the context token).

        Args:
            train_X: `batch_shape x n x d`.
            train_Y: `batch_shape x n x 1`; NaN marks a missing target (pending point).
            train_Yvar: `batch_shape x n x 1` known noise variances of the standardised
                targets (NaN: unknown), for networks with ``noise_hint``.

        Returns:
            `batch_shape x n x emsize`.
        """
        if train_Y.shape[-1] != 1:
            raise ValueError(f"train_Y must end in a 1-dim output, got {tuple(train_Y.shape)}.")
        missing = torch.isnan(train_Y)  # `batch x n x 1`
        y_enc = self.y_encoder(torch.nan_to_num(train_Y, nan=0.0))
        y_enc = torch.where(missing, self.nan_y_embedding, y_enc)
        tokens = self.encode_x(train_X) + y_enc
        self._check_noise(train_Yvar, train_Y)
        if train_Yvar is not None:
            tokens = tokens + self.encode_noise(train_Yvar)
        return tokens

    def encode_train(
        self, train_X: Tensor, train_Y: Tensor, train_Yvar: Optional[Tensor] = None
    ) -> Tensor:
        r"""Training tokens (:meth:`encode_rows`), with the context token prepended.

        Returns:
            `batch_shape x (n + 1) x emsize`.
        """
        tokens = self.encode_rows(train_X, train_Y, train_Yvar)
        ctx = self.context_token.expand(*tokens.shape[:-2], 1, -1)
        return torch.cat([ctx, tokens], dim=-2)

    def _sqdist(self, query_X: Tensor, context_X: Tensor) -> Optional[SqDist]:
        r"""Squared input differences for the metric attention term (None without it).

        Args:
            query_X: `B x q x d`.
            context_X: `B x n x d`.

        Returns:
            `B x q x n x d`; with ``metric_expanded`` the inputs `(query_X, context_X)`
            themselves (see :meth:`PFNLayer.metric_bias`).
        """
        if not self.metric_attention:
            return None
        if self.metric_expanded:
            return query_X, context_X
        return (query_X.unsqueeze(-2) - context_X.unsqueeze(-3)).square()

    def _cast(self, *tensors: Tensor) -> list[Tensor]:
        p = self.x_encoder.weight
        return [t.to(device=p.device, dtype=p.dtype) for t in tensors]

    # ---------------------------------------------------------------- layer loop
    def _run_layers(
        self,
        h: Tensor,
        context_X: Tensor,
        query_X: Optional[Tensor] = None,
        first_kv: Optional[tuple[Tensor, Tensor]] = None,
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        r"""Run the layers over a context (and, optionally, queries attending to it).

        Every layer computes the keys/values of the context tokens (the context token
        and the `n` rows) and updates all tokens by attending to them. The context rows'
        outputs of the last layer are never used, so the last layer updates only the
        context token and the queries.

        Args:
            h: `b x (n + 1 + m) x e`: the context token, `n` context rows and `m` query
                tokens (`m = 0` without `query_X`).
            context_X: `b x n x d` inputs of the context rows.
            query_X: `b x m x d` inputs of the queries (None: no queries).
            first_kv: The first layer's context keys/values, when the caller has them
                (each `b x nhead x (n + 1) x head_dim`).

        Returns:
            The context token's final state (`b x e`), the queries' final states
            (`b x m x e`), and per layer the context keys and values.
        """
        n_ctx = context_X.shape[-2] + 1
        rows_X = context_X if query_X is None else torch.cat([context_X, query_X], dim=-2)
        sqdist = self._sqdist(rows_X, context_X)  # `b x (n+m) x n x d` (or None)
        keys, values = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == 0 and first_kv is not None:
                k, v = first_kv
            else:
                k, v = layer.context_kv(h[:, :n_ctx])
            keys.append(k)
            values.append(v)
            if i == last:  # the token and the queries only
                h = torch.cat([h[:, :1], h[:, n_ctx:]], dim=-2)
                sqdist = _query_rows(sqdist, n_ctx - 1)
            h = layer.attend(h, k, v, sqdist, token_row=True)
        return h[:, 0], h[:, 1:], keys, values

    def _fit_gp(
        self,
        token: Tensor,
        context_X: Tensor,
        context_Y: Tensor,
        context_Yvar: Optional[Tensor] = None,
        gp_init: Optional[Tensor] = None,
        gp_logits: Optional[PriorLogits] = None,
    ) -> Optional[GPFit]:
        r"""The GP head's fit to flattened contexts (`b x e` or None: see
        :meth:`_skips_network`; `b x n x d`, `b x n x 1`, known noise variances
        `b x n x 1` or None); None without the head or for an empty context. `gp_init`
        (`b x J x (d + 2)`, or `1 x ...` for every context): a warm start of the
        refinement (``gp_refine_warm_steps`` steps instead of ``gp_refine_steps``);
        `gp_logits`: the particles' weight logits to use instead of the network's."""
        if not self.gp_head or context_X.shape[-2] == 0:
            return None
        c = self.config
        b = context_X.shape[0]
        if gp_init is not None and gp_init.shape[0] == 1 and b > 1:
            gp_init = gp_init.expand(b, *gp_init.shape[1:])
        return self.gp.fit(token, context_X, context_Y, self._refine_steps(gp_init),
                           self._refine_min_context(context_X.shape[-1]),
                           c.gp_refine_max_rows,
                           known_noise=context_Yvar,
                           constant_mean=c.gp_constant_mean,
                           init_particles=gp_init,
                           min_noise=c.gp_min_noise,
                           steps_per_ratio=c.gp_refine_steps_per_ratio,
                           warm_tol=c.gp_refine_warm_tol,
                           init_logits=gp_logits)  # fmt: skip

    def _refine_steps(self, gp_init: Optional[Tensor]) -> int:
        r"""The refinement's steps: ``gp_refine_warm_steps`` from a warm start
        (`gp_init`), else ``gp_refine_steps`` (0: no refinement either way)."""
        c = self.config
        if gp_init is not None and c.gp_refine_steps > 0:
            return c.gp_refine_warm_steps
        return c.gp_refine_steps

    def _refine_min_context(self, d: int) -> int:
        r"""The observed targets from which a context of `d` inputs is refined: from
        ``gp_refine_start_per_dim`` per input dimension (at least REFINE_START_MIN)
        where that is earlier than ``gp_refine_min_context``, and at least
        ``gp_refine_min_per_dim`` per lengthscale to fit."""
        c = self.config
        min_context = c.gp_refine_min_context
        if c.gp_refine_start_per_dim > 0:
            start = max(REFINE_START_MIN, math.ceil(c.gp_refine_start_per_dim * d))
            min_context = min(min_context, start)
        return max(min_context, math.ceil(c.gp_refine_min_per_dim * d))

    def _skips_network(
        self,
        context_Y: Tensor,
        d: int,
        gp_init: Optional[Tensor],
        gp_logits: Optional[PriorLogits],
    ) -> bool:
        r"""Whether the GP head can fit the contexts (`b x n x 1` targets, `d` inputs)
        without a network pass: a warm start with given logits, where the GP head refines
        every context (a context left unrefined keeps the network's proposals)."""
        if gp_init is None or gp_logits is None or not self.gp_head or context_Y.shape[-2] == 0:
            return False
        return self.gp.refines_every_context(context_Y, self._refine_steps(gp_init),
                                             self._refine_min_context(d))  # fmt: skip

    # ---------------------------------------------------------------- output head
    def _output_logits(self, h: Tensor, fit: Optional[GPFit], query_X: Tensor) -> Tensor:
        r"""Bucket logits from the final test-token states `h` (`b x m x e`): the
        decoder's, with the GP head's mixture mixed in (when there is a fit).

        Args:
            h: `b x m x e`.
            fit: The GP head's fit of the `b` contexts (None: decoder only).
            query_X: `b x m x d` test inputs.

        Returns:
            `b x m x num_buckets` logits.
        """
        logits = self.decoder(h)
        if fit is None:
            return logits
        log_q, omega = self.gp.log_probs(h, fit, query_X, self.borders)
        return GPHead.mix_into(logits, log_q, omega)

    # ---------------------------------------------------------------- reference
    def forward(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        test_X: Tensor,
        kv_cache: Optional[KVCache] = None,
        train_Yvar: Optional[Tensor] = None,
        test_Y: Optional[Tensor] = None,
        gp_borders: Optional[Tensor] = None,
        gp_observation_noise: bool = True,
        gp_init: Optional[Tensor] = None,
        gp_logits: Optional[PriorLogits] = None,
    ) -> Tensor:
        r"""Logits of the predictive bar distribution at `test_X` (or, given `test_Y`,
        the NLL of those targets: the training loss).

        Without `kv_cache` this is the reference path: training and test tokens go
        through the transformer together, batch by batch.

        Args:
            train_X: `b x n x d` (ignored when `kv_cache` is given; may be None then).
            train_Y: `b x n x 1` (ignored when `kv_cache` is given; may be None then).
            test_X: `b x m x d` (any batch shape with `kv_cache`).
            kv_cache: An encoded context from :meth:`encode_context`.
            train_Yvar: `b x n x 1` known noise variances of the standardised targets
                (NaN: unknown), for networks with ``noise_hint`` (see
                :meth:`encode_noise`; ignored when `kv_cache` is given).
            test_Y: `b x m x 1` standardised test targets: return their bar NLL,
                `bar_nll(self(train_X, train_Y, test_X), test_Y, self.borders)`, computed
                without the GP head's `K`-bucket mixture (reference path only).
            gp_borders: Return the GP head's mixture alone, on these borders (see
                :meth:`predict`).
            gp_observation_noise: With `gp_borders`: the mixture of noisy targets
                (True) or of the latent function.
            gp_init, gp_logits: A warm start of the GP head's refinement and the
                particles' weight logits (see :meth:`encode_context`; ignored when
                `kv_cache` is given).

        Returns:
            `b x m x num_buckets` logits, or with `test_Y` the `b x m` NLLs.
        """
        if kv_cache is not None:
            if test_Y is not None:
                raise ValueError("test_Y (the training loss) needs the reference path.")
            return self.predict(test_X, kv_cache, gp_borders, gp_observation_noise)
        h, fit, qX, batch_shape = self._reference_pass(train_X, train_Y, test_X, train_Yvar,
                                                       gp_init, gp_logits)  # fmt: skip
        m = qX.shape[-2]
        if test_Y is None:
            if gp_borders is not None and fit is not None:
                log_q = self.gp.mixture_log_probs(fit, qX, gp_borders, gp_observation_noise)
                return log_q.reshape(*batch_shape, m, -1)
            return self._output_logits(h, fit, qX).reshape(*batch_shape, m, -1)
        return self._training_nll(h, fit, qX, test_Y).reshape(*batch_shape, m)

    def _reference_pass(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        test_X: Tensor,
        train_Yvar: Optional[Tensor],
        gp_init: Optional[Tensor],
        gp_logits: Optional[PriorLogits] = None,
    ) -> tuple[Tensor, Optional[GPFit], Tensor, torch.Size]:
        r"""Training and test tokens through the layers together (the reference path).

        Returns:
            The final test-token states `h` (`b x m x e`), the GP head's fit of the `b`
            flattened contexts (or None), the flattened test inputs `qX` (`b x m x d`)
            and the batch shape.
        """
        query_X = test_X  # for the GP head: in its own dtype (the head computes in float64)
        train_X, train_Y, test_X = self._cast(train_X, train_Y, test_X)
        if train_X.shape[:-2] != test_X.shape[:-2]:
            raise ValueError(
                "The reference path needs train and test batch shapes to match, got "
                f"{tuple(train_X.shape[:-2])} and {tuple(test_X.shape[:-2])}."
            )
        batch_shape = test_X.shape[:-2]
        (n, d), m = train_X.shape[-2:], test_X.shape[-2]
        r = self._ROW_DIM
        h = torch.cat([self.encode_train(train_X, train_Y, train_Yvar), self.encode_x(test_X)], r)
        h = h.reshape(-1, *h.shape[r:])  # `b x (n+1+m) x e` (cells: `b x (n+1+m) x (d+1) x e`)
        b = h.shape[0]  # explicit: `-1` is ambiguous when n = 0
        cX, cY, qX = train_X.reshape(b, n, d), train_Y.reshape(b, n, 1), test_X.reshape(b, m, d)
        token, h, _, _ = self._run_layers(h, cX, qX)
        cYvar = None if train_Yvar is None else train_Yvar.reshape(b, n, 1)
        fit = self._fit_gp(token, cX, cY, cYvar, gp_init, gp_logits)
        return h, fit, query_X.reshape(b, m, d), batch_shape

    def gp_mixture(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        test_X: Tensor,
        kv_cache: Optional[KVCache] = None,
        train_Yvar: Optional[Tensor] = None,
        observation_noise: bool = True,
        gp_init: Optional[Tensor] = None,
        gp_logits: Optional[PriorLogits] = None,
    ) -> GPMixture:
        r"""The GP head's predictive at `test_X`: a Gaussian mixture per point.

        With `kv_cache` this is :meth:`predict_gp_mixture`; without, the reference path
        (the context re-encoded with every test batch element, as :meth:`forward`).

        Args:
            train_X, train_Y, train_Yvar, gp_init, gp_logits: As for :meth:`forward`
                (ignored with `kv_cache`).
            test_X: `b x m x d` (any batch shape with `kv_cache`).
            kv_cache: An encoded context from :meth:`encode_context`.
            observation_noise: The mixture of noisy targets (True) or of the latent
                function.

        Returns:
            A :class:`~botorch_community.pfn.gp_head.GPMixture` with
            `batch_shape x m x J` fields (float64, standardised targets).
        """
        if kv_cache is not None:
            return self.predict_gp_mixture(test_X, kv_cache, observation_noise)
        _, fit, qX, batch_shape = self._reference_pass(train_X, train_Y, test_X, train_Yvar,
                                                       gp_init, gp_logits)  # fmt: skip
        if fit is None:
            raise ValueError(_NO_GP_FIT)
        mix = self.gp.mixture(fit, qX, observation_noise)  # on the network's device
        return GPMixture(*(t.reshape(*batch_shape, *t.shape[-2:]).to(test_X.device) for t in mix))

    def _training_nll(
        self, h: Tensor, fit: Optional[GPFit], query_X: Tensor, test_Y: Tensor
    ) -> Tensor:
        r"""Bar NLL of `test_Y` (`b x m x 1`) under the output at states `h` (`b x m x e`);
        with a GP fit, the GP part at the target buckets only (no `K`-sized GP tensors).
        NaN targets give NaN."""
        logits = self.decoder(h)
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.float()
            if fit is None:
                return bar_nll(logits, test_Y.reshape(logits.shape[:-1]), self.borders)
            y = test_Y.reshape(logits.shape[:-1]).to(logits)  # `b x m`
            idx = bucket_index(torch.nan_to_num(y), self.borders.to(y))
            log_p_bar = logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            out = self.gp.nll_at(h, fit, query_X, self.borders, log_p_bar, idx)
            widths = (self.borders[1:] - self.borders[:-1]).to(out)
            out = (out + widths[idx].log()).to(logits.dtype)
            return torch.where(torch.isnan(y), y, out)

    # ------------------------------------------------------------------- dtype
    @property
    def dtype(self) -> torch.dtype:
        r"""The dtype the network computes in (that of its weights)."""
        return self.x_encoder.weight.dtype

    def cast_copy(
        self, dtype: torch.dtype, state: Optional[tuple] = None, verify: bool = False
    ) -> "PFNTransformer":
        r"""This network computing in `dtype`: itself if it already does, else an
        inference-only copy (no gradients w.r.t. the weights) held by this network and
        shared by all its users (:class:`~.dtype_copies.DtypeCopies`).

        Args:
            dtype: A floating-point dtype.
            state: This network's :meth:`weights_state`, if the caller has it (it is
                computed here otherwise).
            verify: Compare a held copy with the current weights first (see
                :meth:`~.dtype_copies.DtypeCopies.get`).

        Returns:
            A :class:`PFNTransformer` with weights in `dtype` on this network's device,
            in this network's train/eval mode.
        """
        if dtype == self.dtype:
            return self
        if not dtype.is_floating_point:
            raise ValueError(f"cast_copy needs a floating-point dtype, got {dtype}.")
        state = self.weights_state() if state is None else state
        return self._dtype_copies.get(self, dtype, state, verify=verify)

    def __getstate__(self) -> dict:
        # never pickle the dtype copies (a float64 copy is twice the weights): rebuilt
        # on demand; nor the module list of `weights_state`
        state = self.__dict__.copy()
        state["_dtype_copies"] = DtypeCopies()
        state.pop("_state_modules", None)
        return state

    def __deepcopy__(self, memo: dict) -> "PFNTransformer":
        # copy the module, not the dtype copies (they are rebuilt on demand)
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k == "_state_modules":
                continue
            new.__dict__[k] = DtypeCopies() if k == "_dtype_copies" else copy.deepcopy(v, memo)
        return new

    def weights_state(self) -> tuple:
        r"""A key of the current weights and inference settings: changes when any
        parameter or buffer is replaced or edited in place (tensor version counters) or
        moved, or when the config (e.g. the GP head's refinement) changes.

        Called once per posterior call, so it reads the modules' parameter and buffer
        dicts directly from a held module list (rebuilt when a submodule is replaced)
        rather than walking ``parameters()``.
        """
        held = self.__dict__.get("_state_modules")
        if held is None or held[1] != _child_ids(held[0]):
            mods = tuple(self.modules())
            held = (mods, _child_ids(mods))
            self.__dict__["_state_modules"] = held
        return tuple(
            (id(t), t._version, t.dtype, t.device)
            for m in held[0]
            for tensors in (m._parameters, m._buffers)
            for t in tensors.values()
            if t is not None
        ) + (self.config,)

    # ------------------------------------------------------------------- cached
    @torch.no_grad()
    def encode_context(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        train_Yvar: Optional[Tensor] = None,
        gp_init: Optional[Tensor] = None,
        gp_logits: Optional[PriorLogits] = None,
        network_states: bool = True,
    ) -> KVCache:
        r"""Run the training context through the network once.

        Runs under `torch.no_grad()` (not `inference_mode`), so the cached keys/values
        can be used in graphs that need gradients w.r.t. test inputs. The cache does not
        record what it was computed from: its owner decides when it is stale.

        Args:
            train_X: `batch_shape x n x d` (`batch_shape` may be empty).
            train_Y: `batch_shape x n x 1`; NaN marks a missing target.
            train_Yvar: `batch_shape x n x 1` known noise variances (NaN: unknown), for
                networks with ``noise_hint``.
            gp_init: Raw GP particles to warm-start the GP head's refinement from (the
                ``theta`` of an earlier fit, `prod(batch_shape) x J x (d + 2)`).
            gp_logits: The particles' weight logits to use instead of the network's
                (an earlier fit's ``prior_logits``, with `gp_init`).
            network_states: Whether the cache must hold the layers' keys/values (for
                the network's own predictions: :meth:`predict`, :meth:`extend_context`).
                With False, a warm start with `gp_logits` whose every context is refined
                skips the network pass: the cache then holds the GP head's fit and the
                context inputs only (the GP head's predictive, :meth:`predict_gp_mixture`,
                needs nothing else).

        Returns:
            A :class:`KVCache` with per-layer keys/values of the `n + 1` context tokens
            (none where the pass was skipped: ``has_network_states`` is False).
        """
        train_X, train_Y = self._cast(train_X, train_Y)
        batch_shape, (n, d) = train_X.shape[:-2], train_X.shape[-2:]
        b = math.prod(batch_shape)
        cX, cY = train_X.reshape(b, n, d), train_Y.reshape(b, n, 1)
        cYvar = None if train_Yvar is None else train_Yvar.reshape(b, n, 1)
        if not network_states and self._skips_network(cY, d, gp_init, gp_logits):
            fit = self._fit_gp(None, cX, cY, cYvar, gp_init, gp_logits)
            return self._make_cache([], [], batch_shape, cX, fit)
        h = self.encode_train(train_X, train_Y, train_Yvar)  # `batch x (n+1) x e`
        h = h.reshape(-1, *h.shape[self._ROW_DIM :])
        token, _, keys, values = self._run_layers(h, cX)
        fit = self._fit_gp(token, cX, cY, cYvar, gp_init, gp_logits)
        return self._make_cache(keys, values, batch_shape, cX, fit)

    def extend_context(
        self,
        ctx_X: Tensor,
        ctx_Y: Tensor,
        extra_X: Tensor,
        extra_Y: Tensor,
        base_cache: Optional[KVCache] = None,
        ctx_Yvar: Optional[Tensor] = None,
        extra_Yvar: Optional[Tensor] = None,
    ) -> KVCache:
        r"""Encode a batch of contexts, each the shared rows plus its own extra rows.

        Used for conditional passes (e.g. the copula correlations of
        ``MultivariatePFNModel``): context `i` holds the `n` shared rows and the `k`
        rows of `extra_X[i]`. Unlike :meth:`encode_context` this keeps the autograd
        graph (the extra rows usually depend on test inputs). The first layer's
        keys/values of the shared rows do not depend on the extra rows and are taken
        from `base_cache` when it is given: the caller vouches that it encodes exactly
        `ctx_X, ctx_Y, ctx_Yvar` with this network's current weights.

        Args:
            ctx_X: `n x d` shared context inputs.
            ctx_Y: `n x 1` shared standardised targets.
            extra_X: `batch_shape x k x d` extra inputs.
            extra_Y: `batch_shape x k x 1` extra standardised targets.
            base_cache: The cache of `ctx_X, ctx_Y` (and `ctx_Yvar`) from
                :meth:`encode_context`.
            ctx_Yvar: `n x 1` known noise variances of the shared rows (NaN: unknown),
                for networks with ``noise_hint``.
            extra_Yvar: `batch_shape x k x 1` known noise variances of the extra rows.

        Returns:
            A :class:`KVCache` with batch shape `batch_shape` and `n + k` rows.
        """
        ctx_X, ctx_Y, extra_X, extra_Y = self._cast(ctx_X, ctx_Y, extra_X, extra_Y)
        batch_shape, (k, d) = extra_X.shape[:-2], extra_X.shape[-2:]
        h_shared = self.encode_train(ctx_X, ctx_Y, ctx_Yvar)  # `(n+1) x e`
        h_extra = self.encode_rows(extra_X, extra_Y, extra_Yvar)
        h_extra = h_extra.reshape(-1, k, h_shared.shape[-1])  # `Bf x k x e`
        Bf = h_extra.shape[0]
        h = torch.cat([h_shared.expand(Bf, -1, -1), h_extra], dim=-2)  # `Bf x (n+1+k) x e`
        all_X = torch.cat([ctx_X.expand(Bf, -1, -1), extra_X.reshape(Bf, k, d)], dim=-2)
        all_Y = torch.cat([ctx_Y.expand(Bf, -1, -1), extra_Y.reshape(Bf, k, 1)], dim=-2)
        first_kv = None
        if (
            base_cache is not None
            and base_cache.has_network_states
            and base_cache.batch_shape == torch.Size([])
            and base_cache.num_context == ctx_X.shape[-2]
        ):
            k_e, v_e = self.layers[0].context_kv(h_extra)
            k_s = base_cache.keys[0].expand(Bf, -1, -1, -1)
            v_s = base_cache.values[0].expand(Bf, -1, -1, -1)
            first_kv = torch.cat([k_s, k_e], dim=-2), torch.cat([v_s, v_e], dim=-2)
        token, _, keys, values = self._run_layers(h, all_X, first_kv=first_kv)
        all_Yvar = joined_noise(ctx_Y, ctx_Yvar, extra_Y, extra_Yvar, Bf)
        fit = self._fit_gp(token, all_X, all_Y, all_Yvar)
        return self._make_cache(keys, values, batch_shape, all_X, fit)

    def _make_cache(
        self,
        keys: list[Tensor],
        values: list[Tensor],
        batch_shape: torch.Size,
        context_X: Tensor,
        fit: Optional[GPFit],
    ) -> KVCache:
        r"""A :class:`KVCache` from flattened (`b = prod(batch_shape)`) layer outputs."""
        keep_X = self.metric_attention or self.gp_head
        return KVCache(
            keys=tuple(k.reshape(*batch_shape, *k.shape[1:]) for k in keys),
            values=tuple(v.reshape(*batch_shape, *v.shape[1:]) for v in values),
            batch_shape=batch_shape,
            num_context=context_X.shape[-2],
            context_X=context_X.reshape(*batch_shape, *context_X.shape[1:]) if keep_X else None,
            gp_fit=fit,
        )

    def predict(
        self,
        test_X: Tensor,
        kv_cache: KVCache,
        gp_borders: Optional[Tensor] = None,
        gp_observation_noise: bool = True,
    ) -> Tensor:
        r"""Logits at `test_X` against a cached context.

        The test batch shape must broadcast with the cache's batch shape. Batch
        dimensions over which the cache is singleton are flattened into the query axis
        (:func:`~botorch_community.pfn.kv_cache.to_cache_layout`).

        Args:
            test_X: `test_batch_shape x m x d`.
            kv_cache: From :meth:`encode_context` of this network with its current
                weights (its owner keeps it fresh).
            gp_borders: `K' + 1` increasing borders (standardised targets): return the
                GP head's mixture alone, on these borders (networks with a GP head and
                a non-empty context; else this is ignored). The test tokens then skip
                the transformer layers, so a call costs about a posterior of
                `gp_particles` GPs; the borders can be finer than the network's.
            gp_observation_noise: With `gp_borders`: the mixture of noisy targets
                (True) or of the latent function (the network's own output is always
                that of a noisy target).

        Returns:
            `broadcast(test_batch_shape, cache_batch_shape) x m x num_buckets` logits
            (`K'` buckets with `gp_borders`).
        """
        if not kv_cache.has_network_states:
            raise ValueError(
                "This KVCache holds only the GP head's fit (encoded with "
                "network_states=False); the network's predictions need a cache encoded "
                "with network_states=True."
            )
        if kv_cache.num_layers != len(self.layers):
            raise RuntimeError("This KVCache was computed by a different network.")
        raw_X = test_X  # the GP head's queries: not rounded to the network's dtype
        (test_X,) = self._cast(test_X)
        h, restore = to_cache_layout(self._query_tokens(test_X), kv_cache.batch_shape)
        qX = gX = cX = None  # `Bc x M x d` (network's dtype, and raw), `Bc x n x d`
        if kv_cache.context_X is not None:
            if kv_cache.context_X.shape[-1] != test_X.shape[-1]:
                raise ValueError(
                    f"test_X has d={test_X.shape[-1]} features but the cached context "
                    f"has d={kv_cache.context_X.shape[-1]}."
                )
            qX, _ = to_cache_layout(test_X, kv_cache.batch_shape)
            gX, _ = to_cache_layout(raw_X, kv_cache.batch_shape)
            cX = kv_cache.context_X.reshape(h.shape[0], *kv_cache.context_X.shape[-2:])
        elif self.metric_attention or (self.gp_head and kv_cache.num_context > 0):
            raise RuntimeError("This KVCache lacks the context inputs the network needs.")
        M = h.shape[-2]
        chunk = PREDICT_CHUNK_QUERIES
        if M > chunk and not (torch.is_grad_enabled() and test_X.requires_grad):
            # Without a graph to keep, queries are independent given the cache: bounded
            # memory (the GP head's `particles x buckets` float64 temporaries are about
            # 0.2 MB per query) whatever the number of candidates.
            parts = [
                self._predict_queries(
                    h[:, i : i + chunk], kv_cache,
                    None if qX is None else qX[:, i : i + chunk],
                    None if gX is None else gX[:, i : i + chunk],
                    cX, gp_borders, gp_observation_noise,
                )  # fmt: skip
                for i in range(0, M, chunk)
            ]
            return restore(torch.cat(parts, dim=-2))
        return restore(
            self._predict_queries(h, kv_cache, qX, gX, cX, gp_borders, gp_observation_noise)
        )

    def predict_gp_mixture(
        self, test_X: Tensor, kv_cache: KVCache, observation_noise: bool = True
    ) -> GPMixture:
        r"""The GP head's mixture at `test_X` against a cached context.

        The test tokens never enter the transformer: a call costs the posterior of the
        head's (few, after pruning) GP particles.

        Args:
            test_X: `test_batch_shape x m x d`, broadcastable with the cache's batch.
            kv_cache: From :meth:`encode_context` of this network (a GP head and a
                non-empty context).
            observation_noise: The mixture of noisy targets (True) or of the latent
                function.

        Returns:
            A :class:`~botorch_community.pfn.gp_head.GPMixture` with
            `broadcast(test_batch_shape, cache_batch_shape) x m x J` fields.
        """
        if kv_cache.gp_fit is None or kv_cache.context_X is None:
            raise ValueError(_NO_GP_FIT)
        if kv_cache.context_X.shape[-1] != test_X.shape[-1]:
            raise ValueError(
                f"test_X has d={test_X.shape[-1]} features but the cached context "
                f"has d={kv_cache.context_X.shape[-1]}."
            )
        # not cast to the network's dtype: the head's algebra is float64, and float64
        # candidates must not be rounded (L-BFGS-B would see float32 steps)
        qX, restore = to_cache_layout(test_X, kv_cache.batch_shape)  # `Bc x M x d`
        # the head's fit lives with the network (a CPU network may serve CUDA inputs)
        qX = qX.to(kv_cache.context_X.device)
        M, chunk = qX.shape[-2], PREDICT_CHUNK_QUERIES
        if M > chunk and not (torch.is_grad_enabled() and test_X.requires_grad):
            parts = [self.gp.mixture(kv_cache.gp_fit, qX[:, i : i + chunk], observation_noise)
                     for i in range(0, M, chunk)]  # fmt: skip
            mix = GPMixture(*(torch.cat(f, dim=-2) for f in zip(*parts)))
        else:
            mix = self.gp.mixture(kv_cache.gp_fit, qX, observation_noise)
        return GPMixture(*(restore(t).to(test_X.device) for t in mix))

    def _predict_queries(
        self,
        h: Tensor,
        kv_cache: KVCache,
        qX: Optional[Tensor],
        gX: Optional[Tensor],
        cX: Optional[Tensor],
        gp_borders: Optional[Tensor],
        gp_observation_noise: bool = True,
    ) -> Tensor:
        r"""Logits of `Bc x M` query tokens `h` (`Bc x M x e`) against the cache (in
        the cache layout; `qX`: `Bc x M x d` in the network's dtype, `gX` the same in
        the caller's dtype (for the GP head), `cX`: `Bc x n x d` or None)."""
        if gp_borders is not None and kv_cache.gp_fit is not None:
            return self.gp.mixture_log_probs(kv_cache.gp_fit, gX, gp_borders,
                                             gp_observation_noise)  # fmt: skip
        h = self._query_states(h, kv_cache, qX, cX)
        return self._output_logits(h, kv_cache.gp_fit, gX)

    def _query_tokens(self, test_X: Tensor) -> Tensor:
        r"""The tokens of test rows as :meth:`predict` lays them out against a cache
        (`batch_shape x m x f`; here :meth:`encode_x`, `f = emsize`)."""
        return self.encode_x(test_X)

    def _query_states(
        self, h: Tensor, kv_cache: KVCache, qX: Optional[Tensor], cX: Optional[Tensor]
    ) -> Tensor:
        r"""Final states (`Bc x M x e`) of query tokens `h` (`Bc x M x f`, from
        :meth:`_query_tokens`) run through the layers against the cached keys/values
        (`qX`: `Bc x M x d`, `cX`: `Bc x n x d` for the metric term, or None)."""
        sqdist = self._sqdist(qX, cX) if cX is not None else None  # `Bc x M x n x d`
        for layer, k, v in zip(self.layers, kv_cache.keys, kv_cache.values):
            h = layer.attend(h, k.reshape(-1, *k.shape[-3:]), v.reshape(-1, *v.shape[-3:]), sqdist)
        return h


def joined_noise(
    ctx_Y: Tensor,
    ctx_Yvar: Optional[Tensor],
    extra_Y: Tensor,
    extra_Yvar: Optional[Tensor],
    Bf: int,
) -> Optional[Tensor]:
    r"""Known noise variances of extended contexts (:meth:`PFNTransformer.extend_context`):
    the shared rows' (`n x 1`) then each context's extra rows' (`... x k x 1`), NaN where
    unknown; `Bf x (n + k) x 1`, or None when neither is given."""
    if ctx_Yvar is None and extra_Yvar is None:
        return None
    k = extra_Y.shape[-2]
    nan = lambda like: torch.full_like(like, float("nan"))
    s_var = nan(ctx_Y) if ctx_Yvar is None else ctx_Yvar.to(ctx_Y)
    e_var = nan(extra_Y) if extra_Yvar is None else extra_Yvar.to(extra_Y)
    return torch.cat([s_var.expand(Bf, -1, -1), e_var.reshape(Bf, k, 1)], dim=-2)


def _child_ids(modules: tuple[nn.Module, ...]) -> tuple[int, ...]:
    r"""Identities of the children of `modules` (changes when a submodule is replaced)."""
    return tuple(id(c) for m in modules for c in m._modules.values())


_NO_GP_FIT = (
    "The GP head's mixture needs a network with a GP head (gp_head=True) and a non-empty "
    "context; use the network's bucket logits (forward / predict) otherwise."
)


def _query_rows(sqdist: Optional[SqDist], n: int) -> Optional[SqDist]:
    r"""The rows of the queries (after the `n` context rows) of a metric term."""
    if sqdist is None:
        return None
    if isinstance(sqdist, tuple):
        return sqdist[0][:, n:], sqdist[1]
    return sqdist[:, n:]
