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
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn, Tensor

from botorch_community.pfn.bar_distribution import (
    bar_nll,
    bucket_index,
    log_gaussian_bucket_probs,
    mix_log_probs,
)
from botorch_community.pfn.gp_head import check_refinement, GPHead
from botorch_community.pfn.kv_cache import KVCache


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


#: Temperature of the soft minimum in :meth:`PFNLayer.metric_bias` (in units of the
#: scaled squared distance, before the gate).
METRIC_SOFTMIN_TEMPERATURE = 0.01
#: Noise hints (``noise_hint``): smaller known variances of the standardised targets
#: count as this one (the smallest noise the GP prior draws, relative to its outputscale;
#: a noise-free objective is passed as 0), and the log-variance feature is
#: `(log v - NOISE_HINT_LOG_CENTER) / NOISE_HINT_LOG_SCALE` (about -1.7 .. 1.7).
NOISE_HINT_MIN_VAR = 1e-6
NOISE_HINT_LOG_CENTER = -7.0
NOISE_HINT_LOG_SCALE = 4.0


def expanded_metric_dist(s: Tensor, query_X: Tensor, context_X: Tensor) -> Tensor:
    r"""The scaled squared distances of :meth:`PFNLayer.metric_bias` without the
    `B x q x n x d` tensor of squared differences (a training-speed option).

    .. math::
        D_h(q, k) = \textstyle\sum_j s_{hqj} x_{qj}^2
            + \sum_j (-2 s_{hqj} x_{qj}) x_{kj} + \sum_j s_{hqj} x_{kj}^2,

    i.e. one batched matrix product with a `2 d` contraction. The expansion cancels
    terms of size `s` (up to `e^14`) to leave distances near 0, so it runs in float64
    (a GEMM, never TF32): its round-off is then far below float32's on the direct form.

    Args:
        s: `B x q x nhead x d` per-query scales.
        query_X: `B x q x d`.
        context_X: `B x n x d`.

    Returns:
        `B x nhead x q x n` distances in the dtype of `s`.
    """
    f64 = torch.float64
    sq = s.to(f64).transpose(1, 2)  # `B x nhead x q x d`
    qx = query_X.to(f64).unsqueeze(1)  # `B x 1 x q x d`
    cx = context_X.to(f64).unsqueeze(1)  # `B x 1 x n x d`
    own = (sq * qx.square()).sum(-1, keepdim=True)  # `B x nhead x q x 1`
    lhs = torch.cat([sq * qx * -2.0, sq], dim=-1)  # `B x nhead x q x 2d`
    rhs = torch.cat([cx, cx.square()], dim=-1)  # `B x 1 x n x 2d`
    return (own + lhs @ rhs.transpose(-1, -2)).to(s.dtype)


def scaled_sqdist(s: Tensor, sqdist: Union[Tensor, tuple[Tensor, Tensor]]) -> Tensor:
    r"""Per-query scaled squared distances `D_h(q, k) = sum_j s_{qhj} (x_qj - x_kj)^2`.

    Args:
        s: `B x q x H x d` non-negative scales.
        sqdist: `B x q x n x d` squared input differences, or the pair of inputs
            `(B x q x d, B x n x d)` for the expanded form (:func:`expanded_metric_dist`).

    Returns:
        `B x H x q x n` in the dtype of `s`.
    """
    if isinstance(sqdist, tuple):
        return expanded_metric_dist(s, *sqdist)
    return torch.einsum("bqhd,bqkd->bhqk", s, sqdist.to(s.dtype))


class PFNLayer(nn.Module):
    r"""A pre-norm transformer layer in which queries attend to given keys/values.

    The layer is split into :meth:`context_kv` (keys and values of the context tokens)
    and :meth:`attend` (update any tokens by attending to those keys and values), so the
    same code serves the reference path (context and test tokens together) and the
    cached path (context keys/values computed once).
    """

    def __init__(
        self,
        emsize: int,
        nhead: int,
        nhid: int,
        dropout: float = 0.0,
        metric_features: int = 0,
    ):
        r"""
        Args:
            emsize: Token embedding size.
            nhead: Number of attention heads.
            nhid: Hidden size of the MLP.
            dropout: Dropout rate (training only).
            metric_features: If positive, the layer adds a distance term to the
                attention logits of every query row that has inputs `x` (see
                :meth:`metric_bias`), with per-head, per-dimension scales predicted
                from the query state for up to this many input dimensions.
        """
        super().__init__()
        if emsize % nhead != 0:
            raise ValueError(f"emsize ({emsize}) must be divisible by nhead ({nhead}).")
        self.nhead = nhead
        self.head_dim = emsize // nhead
        self.norm_attn = nn.LayerNorm(emsize)
        self.in_proj = nn.Linear(emsize, 3 * emsize)  # q, k, v stacked
        self.out_proj = nn.Linear(emsize, emsize)
        self.norm_mlp = nn.LayerNorm(emsize)
        self.mlp = nn.Sequential(
            nn.Linear(emsize, nhid), nn.GELU(), nn.Linear(nhid, emsize)
        )
        self.dropout = dropout
        self.metric_features = metric_features
        if metric_features > 0:
            # log-scales of the squared-distance term, per head and input dimension:
            # a zero projection plus a per-head base (heads cover scales 1 .. ~3e4,
            # from d = 18 at n = 10 to d = 1 at n = 200), and a zero-initialised gate
            # per head so the layer starts as the plain layer (warm starts).
            self.metric_proj = nn.Linear(emsize, nhead * metric_features)
            nn.init.zeros_(self.metric_proj.weight)
            base = torch.linspace(0.0, 4.5, nhead) * math.log(10.0)  # `nhead`
            with torch.no_grad():
                self.metric_proj.bias.copy_(base.repeat_interleave(metric_features))
            self.metric_gate = nn.Parameter(torch.zeros(nhead))

    def metric_bias(self, z: Tensor, sqdist: Union[Tensor, tuple[Tensor, Tensor]]) -> Tensor:
        r"""The distance term of the attention logits.

        .. math::
            b_h(q, k) = g_h \big(\mathrm{softmin}_{\tau, k'}\, D_h(q, k') - D_h(q, k)\big),
            \quad D_h(q, k) = \textstyle\sum_j s_{hj}(z_q) (x_{qj} - x_{kj})^2,

        for a context row `k`, and `0` for the learned context token (key 0), with
        `softmin_tau(D) = -tau log sum_k exp(-D_k / tau)`. The scales
        `s = exp(clamp(W z_q + c))` depend on the query state, so a head can adapt its
        (ARD) metric to the dataset the query has seen. Subtracting (about) the closest
        row's distance keeps the context token on the same footing as the nearest row;
        the soft minimum (`tau = 0.01`, within `tau log n` of the minimum) keeps the
        logits smooth in the test inputs where the nearest row changes (the kink of a
        hard minimum made L-BFGS line searches fail).

        Args:
            z: `B x q x e` normalised query states (rows with inputs only).
            sqdist: `B x q x n x d` squared input differences `(x_q - x_k)^2` to the
                `n` context rows, `d <= metric_features`; or the pair of inputs
                `(B x q x d, B x n x d)` for the expanded form (see
                :func:`expanded_metric_dist`).

        Returns:
            `B x nhead x q x (n + 1)` logit offsets, in float32 or wider.
        """
        expanded = isinstance(sqdist, tuple)
        ref = sqdist[0] if expanded else sqdist
        n, d = (sqdist[1].shape[-2], ref.shape[-1]) if expanded else ref.shape[-2:]
        dt = torch.promote_types(ref.dtype, torch.float32)
        with torch.autocast(z.device.type, enabled=False):
            w = self.metric_proj.weight.to(dt).unflatten(0, (self.nhead, -1))[:, :d]
            c = self.metric_proj.bias.to(dt).unflatten(0, (self.nhead, -1))[:, :d]
            log_s = torch.einsum("bqe,hde->bqhd", z.to(dt), w) + c  # `B x q x nhead x d`
            s = log_s.clamp(-12.0, 14.0).exp()
            dist = scaled_sqdist(s, sqdist)  # `B x nhead x q x n`
            if n > 0:  # subtract a soft minimum over the context rows
                t = METRIC_SOFTMIN_TEMPERATURE
                dist = dist + t * torch.logsumexp(-dist / t, dim=-1, keepdim=True)
            bias = F.pad(-dist, (1, 0))  # the context token (key 0) gets 0
            return bias * self.metric_gate.to(dt).view(-1, 1, 1)

    def _split_heads(self, t: Tensor) -> Tensor:
        # `B x L x e` -> `B x nhead x L x head_dim`
        return t.unflatten(-1, (self.nhead, self.head_dim)).transpose(-3, -2)

    def context_kv(self, h_ctx: Tensor) -> tuple[Tensor, Tensor]:
        r"""Keys and values of context tokens.

        Args:
            h_ctx: `B x n x e` context token states.

        Returns:
            Keys and values, each `B x nhead x n x head_dim`.
        """
        e = h_ctx.shape[-1]
        z = self.norm_attn(h_ctx)
        w_kv, b_kv = self.in_proj.weight[e:], self.in_proj.bias[e:]
        k, v = F.linear(z, w_kv, b_kv).chunk(2, dim=-1)
        return self._split_heads(k), self._split_heads(v)

    def attend(
        self,
        h: Tensor,
        keys: Tensor,
        values: Tensor,
        sqdist: Union[None, Tensor, tuple[Tensor, Tensor]] = None,
        token_row: bool = False,
    ) -> Tensor:
        r"""Update token states by attending to the given context keys/values.

        Args:
            h: `B x m x e` token states (queries).
            keys: `B x nhead x (n + 1) x head_dim` (key 0: the context token).
            values: `B x nhead x (n + 1) x head_dim`.
            sqdist: For layers with a metric term: `B x m' x n x d` squared input
                differences of the query rows that have inputs to the `n` context rows,
                or the pair of their inputs (the expanded form; see :meth:`metric_bias`).
            token_row: Whether query row 0 is the context token (it has no inputs;
                then `m' = m - 1`), else `m' = m`.

        Returns:
            `B x m x e` updated token states.
        """
        e = h.shape[-1]
        z = self.norm_attn(h)
        q = self._split_heads(F.linear(z, self.in_proj.weight[:e], self.in_proj.bias[:e]))
        drop = self.dropout if self.training else 0.0
        bias = None
        if self.metric_features > 0 and sqdist is not None:
            bias = self.metric_bias(z[:, 1:] if token_row else z, sqdist)
            if token_row:
                bias = F.pad(bias, (0, 0, 1, 0))  # the context token's query: no term
            bias = bias.to(q.dtype)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, dropout_p=drop)
        a = a.transpose(-3, -2).flatten(-2)  # `B x m x e`
        h = h + F.dropout(self.out_proj(a), drop, self.training)
        return h + F.dropout(self.mlp(self.norm_mlp(h)), drop, self.training)


class PFNTransformer(nn.Module):
    r"""A prior-data fitted network over rows `(x, y)` with a cacheable context.

    Example:
        >>> net = PFNTransformer(num_features=6, emsize=64, nlayers=2, nhead=2,
        ...                      nhid=128, num_buckets=100)
        >>> logits = net(train_X, train_Y, test_X)  # reference path
        >>> cache = net.encode_context(train_X[:1], train_Y[:1])
        >>> logits_cached = net.predict(test_X, cache)  # same values
    """

    def __init__(
        self,
        num_features: int,
        emsize: int = 256,
        nlayers: int = 6,
        nhead: int = 4,
        nhid: int = 512,
        num_buckets: int = 1000,
        borders: Optional[Tensor] = None,
        dropout: float = 0.0,
        max_context: Optional[int] = None,
        metric_attention: bool = False,
        gaussian_head: bool = False,
        noise_hint: bool = False,
        target_readout: bool = False,
        readout_init_logit: float = -4.0,
        gp_head: bool = False,
        gp_particles: int = 4,
        gp_init_logit: float = -2.0,
        gp_refine_steps: int = 0,
        gp_refine_min_context: int = 20,
    ) -> None:
        r"""
        Args:
            num_features: The most input dimensions the network accepts. Inputs with
                `d < num_features` are zero-padded and rescaled by `num_features / d`.
            emsize: Token embedding size.
            nlayers: Number of transformer layers.
            nhead: Number of attention heads.
            nhid: Hidden size of each layer's MLP (and of the decoder).
            num_buckets: Number of buckets of the output bar distribution.
            borders: `(num_buckets + 1)` increasing bucket borders in the standardised
                target space. Defaults to equal-mass buckets of a standard normal.
            dropout: Dropout rate (training only).
            max_context: The largest training-set size the network was trained on
                (informational; models warn beyond it). `None` if unknown.
            metric_attention: Add a learned, query-dependent squared-distance term
                between inputs to every layer's attention logits
                (:meth:`PFNLayer.metric_bias`). Dot-product attention on embedded inputs
                finds near neighbours only coarsely; this term lets a head attend
                sharply to the closest context rows, which precise interpolation of
                nearly noise-free data needs. It starts switched off (zero gates), so
                a plain network's weights are a valid warm start.
            gaussian_head: Mix a discretised Gaussian into the output bar
                distribution (:meth:`output_log_probs`). A peak narrower than a few
                buckets at an arbitrary place needs huge, finely placed logits from the
                decoder; a Gaussian needs only a mean and a log-scale, so nearly
                noise-free predictions can be sharp. The result is still a bar
                distribution over the same buckets. It starts with mixing weight
                `sigmoid(-6)`, so a plain network's weights are a near-exact warm start.
            noise_hint: Accept the observation-noise variances of the training rows
                when they are known (`train_Yvar` of :meth:`forward`,
                :meth:`encode_context`, :meth:`extend_context`), embedded by
                :meth:`encode_noise` and added to the rows' tokens. Rows whose noise is
                unknown (None or NaN) get nothing added, so the network also predicts
                without the hint. Starts at zero (an exact warm start).
            target_readout: Mix into the output a discretised Gaussian centred on a
                read-out of the context targets (:meth:`target_readout_params`): a
                kernel-weighted average of the observed `y` with per-dimension scales
                predicted from the test token. The bar distribution is decoded from the
                token alone, so a sharp peak at an observed value must otherwise be
                carried through every layer; the readout gives it directly (aimed at
                noise-free interpolation). Needs the context targets in the
                :class:`KVCache`.
            readout_init_logit: Initial mixing logit of the readout's Gaussian (an
                initialisation only, not part of the config): a grown network starts
                at weight `sigmoid(-4) = 0.018`, i.e. close to its source.
            gp_head: Mix into the output a mixture of GP predictives whose
                hyperparameter particles the network proposes from its context token
                and weights by their marginal likelihood
                (:class:`~botorch_community.pfn.gp_head.GPHead`): exact GP algebra for
                what a bar distribution decoded from a token finds hardest, sharp
                predictions of nearly noise-free data. The fit is kept in the
                :class:`KVCache`.
            gp_particles: The number of hyperparameter particles of the GP head.
            gp_init_logit: Initial mixing logit of the GP head (an initialisation only,
                not part of the config).
            gp_refine_steps: Adam steps of marginal-likelihood ascent on the GP head's
                particles at inference (eval mode; 0: off). Part of the config: it
                changes the predictions, not the weights.
            gp_refine_min_context: Refine contexts of at least this many observed
                targets only.
        """
        super().__init__()
        if borders is None:
            borders = default_borders(num_buckets)
        borders = torch.as_tensor(borders, dtype=torch.float32)
        if borders.shape != (num_buckets + 1,):
            raise ValueError(
                f"borders must have shape ({num_buckets + 1},), got {tuple(borders.shape)}."
            )
        if not bool((borders[1:] > borders[:-1]).all()):
            raise ValueError("borders must be strictly increasing.")
        self.config: dict[str, Any] = dict(
            num_features=num_features,
            emsize=emsize,
            nlayers=nlayers,
            nhead=nhead,
            nhid=nhid,
            num_buckets=num_buckets,
            dropout=dropout,
            max_context=max_context,
        )
        if metric_attention:  # only recorded when on: older configs stay valid
            self.config["metric_attention"] = True
        if gaussian_head:
            self.config["gaussian_head"] = True
        if noise_hint:
            self.config["noise_hint"] = True
        if target_readout:
            self.config["target_readout"] = True
        if gp_head:
            self.config["gp_head"] = True
            self.config["gp_particles"] = int(gp_particles)
        self.noise_hint = bool(noise_hint)
        self.target_readout = bool(target_readout)
        self.gp_head = bool(gp_head)
        self.metric_attention = bool(metric_attention)
        #: Compute the metric term in expanded form (:func:`expanded_metric_dist`):
        #: the same function up to round-off, without the `B x q x n x d` squared
        #: differences. A speed option (not part of the architecture or its config).
        self.metric_expanded = False
        self.gaussian_head = bool(gaussian_head)
        self.num_features = num_features
        self.num_buckets = num_buckets
        self.max_context = max_context
        self.register_buffer("borders", borders)
        self.x_encoder = nn.Linear(num_features, emsize)
        self.y_encoder = nn.Linear(1, emsize)
        # Learned embedding added in place of the y-encoding for a missing target
        # (pending points enter the context this way).
        self.nan_y_embedding = nn.Parameter(torch.zeros(emsize))
        if noise_hint:
            # No bias: a row with unknown noise (features 0) gets exactly nothing added.
            self.noise_encoder = nn.Linear(2, emsize, bias=False)
            nn.init.zeros_(self.noise_encoder.weight)
        # A learned token always present in the context (also makes n = 0 valid).
        self.context_token = nn.Parameter(torch.randn(emsize) * 0.02)
        self.layers = nn.ModuleList(
            PFNLayer(emsize, nhead, nhid, dropout, num_features if metric_attention else 0)
            for _ in range(nlayers)
        )
        self.decoder = nn.Sequential(
            nn.LayerNorm(emsize),
            nn.Linear(emsize, nhid),
            nn.GELU(),
            nn.Linear(nhid, num_buckets),
        )
        if gaussian_head:
            # (mean shift, log-scale ratio, mixing logit) of the Gaussian component,
            # relative to the bar distribution's own mean and std
            self.gauss_head = nn.Linear(nhid, 3)
            nn.init.zeros_(self.gauss_head.weight)
            with torch.no_grad():
                self.gauss_head.bias.copy_(torch.tensor([0.0, 0.0, -6.0]))
        if target_readout:
            self.readout_norm = nn.LayerNorm(emsize)
            # log-scales of the readout's metric per input dimension (start: 100)
            self.readout_scale = nn.Linear(emsize, num_features)
            nn.init.zeros_(self.readout_scale.weight)
            nn.init.constant_(self.readout_scale.bias, math.log(100.0))
            # (mean shift, log std, mixing logit) from the token, log spread, log dmin
            self.readout_head = nn.Linear(emsize + 2, 3)
            nn.init.zeros_(self.readout_head.weight)
            with torch.no_grad():
                self.readout_head.bias.copy_(torch.tensor([0.0, -3.0, readout_init_logit]))
        if gp_head:
            self.gp = GPHead(emsize, num_features, gp_particles, gp_init_logit)
            # settings and their config entries in one place
            self.set_gp_refinement(gp_refine_steps, gp_refine_min_context)

    # ------------------------------------------------------------------ output
    def output_log_probs(
        self, h: Tensor, readout: Optional[tuple[Tensor, Tensor, Tensor]] = None
    ) -> Tensor:
        r"""Bucket logits from final token states, with the target readout's Gaussian
        mixed in where given:

        .. math::
            p_i = (1 - w)\,p^{\mathrm{head}}_i + w \big(\Phi(z_{i+1}) - \Phi(z_i)\big),
            \quad z_i = (b_i - \mu) / \sigma,\quad w = \mathrm{sigmoid}(\omega).

        Args:
            h: `batch_shape x m x emsize` final states of the test tokens.
            readout: `(mu, sigma, omega)`, each `batch_shape x m`, from
                :meth:`target_readout_params` (None: the head alone).

        Returns:
            `batch_shape x m x num_buckets` logits.
        """
        logits = self._head_log_probs(h)
        if readout is None:
            return logits
        mu, sigma, omega = readout
        f64 = torch.float64
        with torch.autocast(h.device.type, enabled=False):
            log_head = torch.log_softmax(logits.to(mu.dtype), dim=-1)
            # float64: in float32 the bucket CDF differences of a narrow Gaussian lose
            # up to 1e-5 of log-probability to cancellation
            log_q = log_gaussian_bucket_probs(
                mu.to(f64), sigma.to(f64), self.borders.to(f64)
            ).to(mu.dtype)
            return mix_log_probs(log_head, log_q, omega.unsqueeze(-1))

    def target_readout_params(
        self, h: Tensor, query_X: Tensor, context_X: Tensor, context_Y: Tensor
    ) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        r"""The target readout's Gaussian (networks with ``target_readout``).

        .. math::
            \hat y(x) = \sum_k w_k y_k,\quad
            w = \mathrm{softmax}_k\big(-\textstyle\sum_j s_j(z) (x_j - x_{kj})^2\big)

        over the context rows with known targets, with scales `s` from the normalised
        token `z`; `(delta, log sigma, omega)` come from `z`, the log of the readout's
        spread `sum_k w_k (y_k - yhat)^2` and the log of the nearest scaled distance.
        At an observed input of noise-free data `yhat` can be the observed value.

        Args:
            h: `batch_shape x m x emsize` final test-token states.
            query_X: `batch_shape x m x d` test inputs.
            context_X: `batch_shape x n x d` context inputs.
            context_Y: `batch_shape x n x 1` standardised targets (NaN: missing).

        Returns:
            `(mu, sigma, omega)`, each `batch_shape x m` (in float32 or wider), or None
            for an empty context.
        """
        n, d = context_X.shape[-2:]
        if n == 0:
            return None
        batch_shape, m = h.shape[:-2], h.shape[-2]
        h = h.reshape(-1, m, h.shape[-1])
        query_X = query_X.reshape(-1, m, d)
        context_X = context_X.reshape(-1, n, d)
        dt = torch.promote_types(h.dtype, torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            z = self.readout_norm(h.to(self.readout_norm.weight.dtype)).to(dt)
            w_s, b_s = self.readout_scale.weight[:d].to(dt), self.readout_scale.bias[:d].to(dt)
            s = F.linear(z, w_s, b_s).clamp(-12.0, 14.0).exp()  # `B x m x d`
            if self.metric_expanded:
                pairs = (query_X.to(dt), context_X.to(dt))
            else:
                pairs = (query_X.unsqueeze(-2) - context_X.unsqueeze(-3)).square()
            dist = scaled_sqdist(s.unsqueeze(-2), pairs).squeeze(-3)  # `B x m x n`
            y = context_Y.reshape(-1, 1, n).to(dt)  # `B x 1 x n`
            known = ~torch.isnan(y)
            has = known.any(-1, keepdim=True)  # `B x 1 x 1`: any target known
            dist = dist.masked_fill(~known, float("inf"))
            # rows without known targets: uniform logits (no NaN), weights zeroed
            w = torch.softmax(torch.where(has, -dist, 0.0), dim=-1) * has  # `B x m x n`
            y = y.nan_to_num(0.0)
            yhat = (w * y).sum(-1)  # `B x m`
            spread = (w * (y - yhat.unsqueeze(-1)).square()).sum(-1)
            dmin = torch.where(has.squeeze(-1), dist.amin(-1).clamp(0.0, 1e6), 1e6)
            feats = torch.cat([z, (spread + 1e-8).log().unsqueeze(-1),
                               (dmin + 1e-8).log().unsqueeze(-1)], dim=-1)  # fmt: skip
            w_r, b_r = self.readout_head.weight.to(dt), self.readout_head.bias.to(dt)
            delta, log_sigma, omega = F.linear(feats, w_r, b_r).unbind(-1)
            out = (yhat + delta, log_sigma.clamp(-9.0, 2.0).exp(), omega)
        return tuple(t.reshape(*batch_shape, m) for t in out)

    def _head_log_probs(self, h: Tensor) -> Tensor:
        r"""The output head: bucket logits from final token states.

        Without ``gaussian_head`` these are the decoder's logits. With it they are the
        log-probabilities of the mixture

        .. math::
            p_i = (1 - w)\,\mathrm{softmax}(\ell)_i + w \big(\Phi(z_{i+1}) - \Phi(z_i)\big),
            \quad z_i = (b_i - \mu) / \sigma,

        with `mu = mean(softmax(l)) + delta`, `sigma = std(softmax(l)) * exp(rho)` and
        `w = sigmoid(omega)`, where `(delta, rho, omega)` come from the decoder's hidden
        layer. Gaussian mass outside the outer borders is dropped (the logits are
        renormalised by every consumer, as any logits are).

        Args:
            h: `batch_shape x m x emsize` final states of the test tokens.

        Returns:
            `batch_shape x m x num_buckets` logits.
        """
        if not self.gaussian_head:
            return self.decoder(h)
        hidden = self.decoder[:3](h)  # `... x nhid`
        logits = self.decoder[3](hidden)
        dt = torch.promote_types(h.dtype, torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            log_bar = torch.log_softmax(logits.to(dt), dim=-1)
            borders = self.borders.to(dt)
            centers = 0.5 * (borders[1:] + borders[:-1])  # `K`
            p = log_bar.exp()
            mean = p @ centers
            var = (p @ centers.square() - mean.square()).clamp_min(1e-12)
            delta, rho, omega = F.linear(
                hidden.to(dt), self.gauss_head.weight.to(dt), self.gauss_head.bias.to(dt)
            ).unbind(-1)
            mu = mean + delta
            sigma = var.sqrt() * rho.clamp(-12.0, 4.0).exp()
            log_q = log_gaussian_bucket_probs(mu, sigma, borders)
            return mix_log_probs(log_bar, log_q, omega.unsqueeze(-1))

    # ------------------------------------------------------------------ encoders
    def encode_x(self, X: Tensor) -> Tensor:
        r"""Embed inputs, zero-padding `d < num_features` and rescaling by
        `num_features / d`.

        Args:
            X: `batch_shape x m x d` inputs (expected in the unit cube).

        Returns:
            `batch_shape x m x emsize` embeddings.
        """
        d = X.shape[-1]
        if d > self.num_features:
            raise ValueError(
                f"The inputs have d={d} features but this network supports at most "
                f"num_features={self.num_features}. Reduce the dimension (e.g. fix or "
                "embed some parameters) or use a network trained with more features."
            )
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

    def _sqdist(
        self, query_X: Tensor, context_X: Tensor
    ) -> Union[None, Tensor, tuple[Tensor, Tensor]]:
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

    # ---------------------------------------------------------------- reference
    def forward(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        test_X: Tensor,
        kv_cache: Optional[KVCache] = None,
        train_Yvar: Optional[Tensor] = None,
        test_Y: Optional[Tensor] = None,
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

        Returns:
            `b x m x num_buckets` logits, or with `test_Y` the `b x m` NLLs.
        """
        if kv_cache is not None:
            if test_Y is not None:
                raise ValueError("test_Y (the training loss) needs the reference path.")
            return self.predict(test_X, kv_cache)
        token, h = self._reference_token_and_states(train_X, train_Y, test_X, train_Yvar)
        readout = None
        train_X, train_Y, test_X = self._cast(train_X, train_Y, test_X)
        if self.target_readout:
            readout = self.target_readout_params(h, test_X, train_X, train_Y)
        logits = self.output_log_probs(h, readout)
        fit = None
        if self.gp_head and train_X.shape[-2] > 0:
            n, d = train_X.shape[-2:]
            fit = self.gp.fit(token.reshape(-1, token.shape[-1]), train_X.reshape(-1, n, d),
                              train_Y.reshape(-1, n, 1))  # fmt: skip
        m, d = test_X.shape[-2:]
        if test_Y is None:
            return self._mix_gp(logits, h, fit, test_X.reshape(-1, m, d))
        with torch.autocast(logits.device.type, enabled=False):
            if fit is None:
                return bar_nll(logits.float(), test_Y, self.borders)  # `b x m`
            # the GP part at the target buckets only (no `K`-sized GP tensors)
            shape, K = logits.shape[:-1], logits.shape[-1]
            logits = logits.float().reshape(-1, m, K)
            y = test_Y.reshape(-1, m).to(logits)
            idx = bucket_index(torch.nan_to_num(y), self.borders.to(y))
            log_p_bar = logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            out = self.gp.nll_at(h.reshape(-1, m, h.shape[-1]), fit, test_X.reshape(-1, m, d),
                                 self.borders, log_p_bar, idx)  # fmt: skip
            widths = (self.borders[1:] - self.borders[:-1]).to(out)
            out = (out + widths[idx].log()).to(logits.dtype)
            return torch.where(torch.isnan(y), y, out).reshape(shape)  # NaN targets: NaN

    def _mix_gp(self, logits: Tensor, h: Tensor, fit: Optional[Any], query_X: Tensor) -> Tensor:
        r"""The GP head's mixture mixed into `logits` (`batch_shape x m x K`), for test
        states `h` and inputs `query_X` (`b x m x d`, `b = prod(batch_shape)`)."""
        if fit is None:  # empty context
            return logits
        shape = logits.shape
        m, e = h.shape[-2:]
        log_q, omega = self.gp.log_probs(h.reshape(-1, m, e), fit, query_X, self.borders)
        out = GPHead.mix_into(logits.reshape(-1, m, shape[-1]), log_q, omega)
        return out.reshape(shape)

    def reference_states(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        test_X: Tensor,
        train_Yvar: Optional[Tensor] = None,
    ) -> Tensor:
        r"""Final states of the test tokens on the reference path (the input of the
        output head): training and test tokens go through the transformer together.

        Args:
            train_X: `b x n x d`.
            train_Y: `b x n x 1`.
            test_X: `b x m x d`.
            train_Yvar: `b x n x 1` known noise variances (see :meth:`forward`).

        Returns:
            `b x m x emsize`.
        """
        return self._reference_token_and_states(train_X, train_Y, test_X, train_Yvar)[1]

    def _reference_token_and_states(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        test_X: Tensor,
        train_Yvar: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Final states of the context token (`b x emsize`) and of the test tokens
        (`b x m x emsize`) on the reference path."""
        train_X, train_Y, test_X = self._cast(train_X, train_Y, test_X)
        if train_X.shape[:-2] != test_X.shape[:-2]:
            raise ValueError(
                "The reference path needs train and test batch shapes to match, got "
                f"{tuple(train_X.shape[:-2])} and {tuple(test_X.shape[:-2])}."
            )
        ctx = self.encode_train(train_X, train_Y, train_Yvar)  # `b x (n+1) x e`
        n_ctx = ctx.shape[-2]
        h = torch.cat([ctx, self.encode_x(test_X)], dim=-2)  # `b x (n+1+m) x e`
        batch_shape = h.shape[:-2]
        h = h.reshape(-1, *h.shape[-2:])
        sqdist = None
        if self.metric_attention:
            d = train_X.shape[-1]
            b = h.shape[0]  # explicit: `-1` is ambiguous when n = 0
            tX = train_X.reshape(b, n_ctx - 1, d)
            qX = torch.cat([tX, test_X.reshape(b, test_X.shape[-2], d)], dim=-2)
            sqdist = self._sqdist(qX, tX)  # `b x (n+m) x n x d`
        for layer in self.layers:
            k, v = layer.context_kv(h[:, :n_ctx])
            h = layer.attend(h, k, v, sqdist, token_row=True)
        h = h.reshape(*batch_shape, *h.shape[-2:])
        return h[..., 0, :], h[..., n_ctx:, :]

    # ------------------------------------------------------------------- dtype
    @property
    def dtype(self) -> torch.dtype:
        r"""The dtype the network computes in (that of its weights)."""
        return self.x_encoder.weight.dtype

    def cast_copy(self, dtype: torch.dtype) -> "PFNTransformer":
        r"""This network computing in `dtype`: itself if it already does, else an
        inference-only copy (no gradients w.r.t. the weights) held by this network.

        The copy is made once and reused until this network's weights change (see
        :meth:`weights_state`), so all models sharing the network share the copy. It
        mirrors the train/eval mode at the time of the call. Used by ``PFNModel`` to
        evaluate a float32 network in float64 for float64 data: L-BFGS-B then sees an
        acquisition surface free of float32 round-off (fewer failed line searches).

        Args:
            dtype: A floating-point dtype.

        Returns:
            A :class:`PFNTransformer` with weights in `dtype` on this network's device.
        """
        if dtype == self.dtype:
            return self
        if not dtype.is_floating_point:
            raise ValueError(f"cast_copy needs a floating-point dtype, got {dtype}.")
        casts = self.__dict__.setdefault("_cast_copies", {})
        state = self.weights_state()
        hit = casts.get(dtype)
        if hit is None or hit[0] != state:
            cast = PFNTransformer(**self.config, borders=self.borders.detach().clone())
            cast.load_state_dict(self.state_dict())
            cast = cast.to(device=self.borders.device, dtype=dtype).requires_grad_(False)
            if self.gp_head:  # the settings now, not the config's
                cast.gp.refine_steps, cast.gp.refine_min_context = self._gp_refinement()
            hit = (state, cast)
            casts[dtype] = hit
        hit[1].train(self.training)
        return hit[1]

    def __deepcopy__(self, memo: dict) -> "PFNTransformer":
        # copy the module, not the cached dtype copies (they are rebuilt on demand)
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k != "_cast_copies":
                new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    # ------------------------------------------------------------------- cached
    def weights_state(self) -> tuple:
        r"""A key of the current weights and inference settings: changes when any
        parameter or buffer is replaced or edited in place (tensor version counters) or
        moved, or when the GP head's refinement settings change."""
        return tuple(
            (id(t), t._version, t.dtype, t.device)
            for t in (*self.parameters(), *self.buffers())
        ) + (self._gp_refinement(),)

    def _gp_refinement(self) -> tuple[int, int]:
        return (self.gp.refine_steps, self.gp.refine_min_context) if self.gp_head else (0, 0)

    def set_gp_refinement(self, steps: int, min_context: Optional[int] = None) -> None:
        r"""Set the GP head's particle refinement at inference (and the config that a
        saved checkpoint records). Caches built before are stale afterwards, and
        ``PFNModel`` rebuilds them.

        Args:
            steps: Adam steps of marginal-likelihood ascent (0: off).
            min_context: Refine contexts with at least this many observed targets
                (unchanged if None).
        """
        if not self.gp_head:
            raise ValueError("This network has no GP head (gp_head=False).")
        min_context = self.gp.refine_min_context if min_context is None else min_context
        check_refinement(steps, min_context)
        self.gp.refine_steps, self.gp.refine_min_context = int(steps), int(min_context)
        self.config.pop("gp_refine_steps", None)
        self.config.pop("gp_refine_min_context", None)
        if steps:
            self.config["gp_refine_steps"] = int(steps)
            self.config["gp_refine_min_context"] = int(min_context)

    @torch.no_grad()
    def encode_context(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        fingerprint: Any = None,
        train_Yvar: Optional[Tensor] = None,
    ) -> KVCache:
        r"""Run the training context through the network once.

        Runs under `torch.no_grad()` (not `inference_mode`), so the cached keys/values
        can be used in graphs that need gradients w.r.t. test inputs.

        Args:
            train_X: `batch_shape x n x d` (`batch_shape` may be empty).
            train_Y: `batch_shape x n x 1`; NaN marks a missing target.
            fingerprint: Opaque key stored on the cache for the owner's staleness check.
            train_Yvar: `batch_shape x n x 1` known noise variances (NaN: unknown), for
                networks with ``noise_hint``.

        Returns:
            A :class:`KVCache` with per-layer keys/values of the `n + 1` context tokens.
        """
        train_X, train_Y = self._cast(train_X, train_Y)
        h = self.encode_train(train_X, train_Y, train_Yvar)  # `batch x (n+1) x e`
        batch_shape = h.shape[:-2]
        h = h.reshape(-1, *h.shape[-2:])
        tX = train_X.reshape(h.shape[0], *train_X.shape[-2:])
        sqdist = self._sqdist(tX, tX)  # `b x n x n x d` (or None)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            k, v = layer.context_kv(h)
            keys.append(k.reshape(*batch_shape, *k.shape[1:]))
            values.append(v.reshape(*batch_shape, *v.shape[1:]))
            if i < len(self.layers) - 1:  # the last layer's context output is unused
                h = layer.attend(h, k, v, sqdist, token_row=True)
        gp_fit = self._gp_fit_context(h, k, v, tX, train_Y)
        return KVCache(
            keys=tuple(keys),
            values=tuple(values),
            batch_shape=batch_shape,
            num_context=train_X.shape[-2],
            network_state=self.weights_state(),
            fingerprint=fingerprint,
            context_X=train_X if self._needs_context_X else None,
            context_Y=train_Y if self.target_readout else None,
            gp_fit=gp_fit,
        )

    @property
    def _needs_context_X(self) -> bool:
        return self.metric_attention or self.target_readout or self.gp_head

    def _gp_fit_context(
        self, h: Tensor, k_last: Tensor, v_last: Tensor, context_X: Tensor, context_Y: Tensor
    ) -> Optional[Any]:
        r"""The GP head's fit to flattened contexts (None without the head).

        Args:
            h: `b x (n + 1) x e` context states entering the last layer.
            k_last, v_last: The last layer's context keys/values.
            context_X: `b x n x d`; context_Y: `... x n x 1` (reshaped to `b`).
        """
        if not self.gp_head:
            return None
        # the context token's final state: the last layer, for that row alone
        token = self.layers[-1].attend(h[:, :1], k_last, v_last)[:, 0]  # `b x e`
        b, n, d = context_X.shape
        return self.gp.fit(token, context_X, context_Y.reshape(b, n, 1))

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
        from `base_cache` when it is given (it must encode exactly `ctx_X, ctx_Y`).

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
        batch_shape, k = extra_X.shape[:-2], extra_X.shape[-2]
        h_shared = self.encode_train(ctx_X, ctx_Y, ctx_Yvar)  # `(n+1) x e`
        h_extra = self.encode_rows(extra_X, extra_Y, extra_Yvar)
        h_extra = h_extra.reshape(-1, k, h_shared.shape[-1])  # `Bf x k x e`
        Bf = h_extra.shape[0]
        h = torch.cat([h_shared.expand(Bf, -1, -1), h_extra], dim=-2)  # `Bf x (n+1+k) x e`
        all_X = torch.cat(
            [ctx_X.expand(Bf, -1, -1), extra_X.reshape(Bf, k, ctx_X.shape[-1])], dim=-2
        )  # `Bf x (n+k) x d`
        sqdist = self._sqdist(all_X, all_X)  # None without metric attention
        reuse = (
            base_cache is not None
            and base_cache.batch_shape == torch.Size([])
            and base_cache.num_context == ctx_X.shape[-2]
            and base_cache.network_state == self.weights_state()
        )
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            if i == 0 and reuse:
                k_e, v_e = layer.context_kv(h_extra)
                k_s = base_cache.keys[0].expand(Bf, -1, -1, -1)
                v_s = base_cache.values[0].expand(Bf, -1, -1, -1)
                key, val = torch.cat([k_s, k_e], dim=-2), torch.cat([v_s, v_e], dim=-2)
            else:
                key, val = layer.context_kv(h)
            keys.append(key.reshape(*batch_shape, *key.shape[1:]))
            values.append(val.reshape(*batch_shape, *val.shape[1:]))
            if i < len(self.layers) - 1:
                h = layer.attend(h, key, val, sqdist, token_row=True)
        all_Y = torch.cat([ctx_Y.expand(Bf, -1, -1), extra_Y.reshape(Bf, k, 1)], dim=-2)
        gp_fit = self._gp_fit_context(
            h, key.reshape(Bf, *key.shape[-3:]), val.reshape(Bf, *val.shape[-3:]), all_X, all_Y
        )  # None without the GP head
        return KVCache(
            keys=tuple(keys),
            values=tuple(values),
            batch_shape=batch_shape,
            num_context=ctx_X.shape[-2] + k,
            network_state=self.weights_state(),
            context_X=(
                all_X.reshape(*batch_shape, *all_X.shape[-2:])
                if self._needs_context_X
                else None
            ),
            context_Y=all_Y.reshape(*batch_shape, -1, 1) if self.target_readout else None,
            gp_fit=gp_fit,
        )

    def predict(self, test_X: Tensor, kv_cache: KVCache) -> Tensor:
        r"""Logits at `test_X` against a cached context.

        The test batch shape must broadcast with the cache's batch shape. Batch
        dimensions over which the cache is singleton are flattened into the query axis,
        so a batch of 512 candidates against a batch-1 context is one sequence of 512
        queries attending to one copy of the context (nothing is copied).

        Args:
            test_X: `test_batch_shape x m x d`.
            kv_cache: From :meth:`encode_context` on this network.

        Returns:
            `broadcast(test_batch_shape, cache_batch_shape) x m x num_buckets` logits.
        """
        if kv_cache.network_state != self.weights_state():
            raise RuntimeError(
                "This KVCache was computed with different network weights (or on "
                "another device/dtype) than the network has now. Re-encode the context "
                "with `encode_context` (PFNModel does this automatically)."
            )
        if kv_cache.num_layers != len(self.layers):
            raise RuntimeError("This KVCache was computed by a different network.")
        (test_X,) = self._cast(test_X)
        h = self.encode_x(test_X)  # `S x m x e`
        h, restore = _to_cache_layout(h, kv_cache.batch_shape)  # `Bc x M x e`
        sqdist, readout = None, None
        if self._needs_context_X:
            if kv_cache.context_X is None or (
                self.target_readout and kv_cache.context_Y is None
            ) or (self.gp_head and kv_cache.gp_fit is None and kv_cache.num_context > 0):
                raise RuntimeError("This KVCache lacks the context data the network needs.")
            if kv_cache.context_X.shape[-1] != test_X.shape[-1]:
                raise ValueError(
                    f"test_X has d={test_X.shape[-1]} features but the cached context "
                    f"has d={kv_cache.context_X.shape[-1]}."
                )
            qX, _ = _to_cache_layout(test_X, kv_cache.batch_shape)  # `Bc x M x d`
            cX = kv_cache.context_X.reshape(h.shape[0], *kv_cache.context_X.shape[-2:])
            sqdist = self._sqdist(qX, cX)  # `Bc x M x n x d` (None without the metric)
        for layer, k, v in zip(self.layers, kv_cache.keys, kv_cache.values):
            k = k.reshape(-1, *k.shape[-3:])
            v = v.reshape(-1, *v.shape[-3:])
            h = layer.attend(h, k, v, sqdist)
        if self.target_readout:
            cY = kv_cache.context_Y.reshape(h.shape[0], -1, 1)
            readout = self.target_readout_params(h, qX, cX, cY)
        logits = self.output_log_probs(h, readout)
        if self.gp_head:
            logits = self._mix_gp(logits, h, kv_cache.gp_fit, qX)
        return restore(logits)


def _to_cache_layout(h: Tensor, cache_batch_shape: torch.Size):
    r"""Arrange test tokens as `prod(cache batch) x M x e` query sequences.

    Args:
        h: `S x m x e` test tokens with `S` broadcastable with `cache_batch_shape`.
        cache_batch_shape: The cache's batch shape `B`.

    Returns:
        The rearranged `Bc x M x e` tokens and a function mapping a `Bc x M x c` output
        back to `broadcast(S, B) x m x c`.
    """
    S, m = h.shape[:-2], h.shape[-2]
    try:
        full = torch.broadcast_shapes(S, cache_batch_shape)
    except RuntimeError:
        raise ValueError(
            f"The test batch shape {tuple(S)} does not broadcast with the cached "
            f"context's batch shape {tuple(cache_batch_shape)}."
        ) from None
    L = len(full)
    B = (1,) * (L - len(cache_batch_shape)) + tuple(cache_batch_shape)
    h = h.expand(*full, *h.shape[-2:]) if tuple(S) != tuple(full) else h
    # dims over which the cache varies lead; the others join the query axis.
    cache_dims = [i for i in range(L) if B[i] > 1]
    query_dims = [i for i in range(L) if B[i] == 1]
    perm = cache_dims + query_dims + [L, L + 1]
    h = h.permute(perm)
    Bc = math.prod(full[i] for i in cache_dims)
    h = h.reshape(Bc, -1, h.shape[-1])  # `Bc x (prod(query dims) * m) x e`

    def restore(out: Tensor) -> Tensor:
        c = out.shape[-1]
        out = out.reshape(
            *[full[i] for i in cache_dims], *[full[i] for i in query_dims], m, c
        )
        inv = [0] * (L + 2)
        for pos, dim in enumerate(perm):
            inv[dim] = pos
        return out.permute(inv)

    return h, restore
