#!/usr/bin/env python3
r"""One transformer layer of the PFN, split so that context keys/values can be cached.

:meth:`PFNLayer.context_kv` computes the keys and values of context tokens (they never
depend on test tokens); :meth:`PFNLayer.attend` updates any tokens by attending to
given keys and values. The same layer serves the reference path (context and test
tokens together), the cached path (context keys/values computed once) and conditional
contexts. With metric attention a learned, query-dependent distance between inputs is
added to the attention logits (:meth:`PFNLayer.metric_bias`).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn, Tensor

#: Squared input differences of queries to context rows, `B x q x n x d`, or the pair
#: of inputs `(B x q x d, B x n x d)` for the expanded form (:func:`expanded_metric_dist`).
SqDist = Union[Tensor, tuple[Tensor, Tensor]]

#: Temperature of the soft minimum in :meth:`PFNLayer.metric_bias` (in units of the
#: scaled squared distance, before the gate).
METRIC_SOFTMIN_TEMPERATURE = 0.01


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


def scaled_sqdist(s: Tensor, sqdist: SqDist) -> Tensor:
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

    def metric_bias(self, z: Tensor, sqdist: SqDist, token_row: bool = False) -> Tensor:
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
        hard minimum made L-BFGS line searches fail). With `D_min = min_k D(q, k)`,

        .. math::
            b_h(q, k) = -g_h \big(D_h(q, k) - D_{min} + \tau \log \textstyle\sum_{k'}
                e^{-(D_h(q, k') - D_{min}) / \tau}\big),

        where terms below `e^{-80}` are dropped (equal to round-off; no denormal `exp`,
        whose slow path was a tenth of an encode). The `q x n` terms are built in few
        passes (in place where nothing needs their gradient): at `n = 1000` they were
        half of an encode.

        Args:
            z: `B x q x e` normalised query states (rows with inputs only).
            sqdist: `B x q x n x d` squared input differences `(x_q - x_k)^2` to the
                `n` context rows, `d <= metric_features`; or the pair of inputs
                `(B x q x d, B x n x d)` for the expanded form (see
                :func:`expanded_metric_dist`).
            token_row: Prepend a zero query row (the context token's, which has no
                inputs): `B x nhead x (q + 1) x (n + 1)`.

        Returns:
            `B x nhead x q x (n + 1)` logit offsets (`q + 1` rows with `token_row`), in
            float32 or wider.
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
            neg_gate = -self.metric_gate.to(dt).view(-1, 1, 1)  # `nhead x 1 x 1`
            pad = (1, 0, 1 if token_row else 0, 0)  # key 0 (and query row 0): no term
            if n == 0:
                return F.pad(dist * neg_gate, pad)
            t = METRIC_SOFTMIN_TEMPERATURE
            d_min = dist.detach().amin(-1, keepdim=True)  # any constant is exact
            d_min = torch.where(torch.isfinite(d_min), d_min, torch.zeros_like(d_min))
            if dist.requires_grad:
                u = dist - d_min  # `B x nhead x q x n`, >= 0
                terms = (u * (-1.0 / t)).clamp_min(-80.0).exp()
                log_sum = terms.sum(-1, keepdim=True).log()  # `B x nhead x q x 1`
                # -g (u + t log S), in one pass
                return F.pad(torch.addcmul(neg_gate * t * log_sum, u, neg_gate), pad)
            # nothing needs gradients (the encode): write u into the padded result and
            # reuse `dist`'s buffer for the terms (fresh buffers of this size cost more
            # in page faults than the arithmetic)
            B, H, q = dist.shape[:3]
            out = dist.new_empty(B, H, q + pad[2], n + 1)
            out[..., 0] = 0.0
            out[:, :, : pad[2]] = 0.0
            u = torch.sub(dist, d_min, out=out[:, :, pad[2]:, 1:])
            terms = torch.mul(u, -1.0 / t, out=dist).clamp_min_(-80.0).exp_()
            log_sum = terms.sum(-1, keepdim=True).log()
            u.mul_(neg_gate).add_(neg_gate * t * log_sum)
            return out

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
        sqdist: Optional[SqDist] = None,
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
            bias = self.metric_bias(z[:, 1:] if token_row else z, sqdist, token_row)
            bias = bias.to(q.dtype)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, dropout_p=drop)
        a = a.transpose(-3, -2).flatten(-2)  # `B x m x e`
        h = h + F.dropout(self.out_proj(a), drop, self.training)
        return h + F.dropout(self.mlp(self.norm_mlp(h)), drop, self.training)
