#!/usr/bin/env python3
r"""A PFN with one token per input dimension of each row: any `d`, one set of weights.

The row network (:class:`~botorch_community.pfn.transformer.PFNTransformer`) embeds a
row's inputs with one linear map over `num_features` zero-padded columns, so its weights
fix the largest `d`. Here each cell of the data table is a token, as in TabPFN v2 and
the ``pfns`` package's table transformer: a row of `d` inputs and one target is `d + 1`
tokens, embedded by maps shared by all dimensions. Each layer

1. lets the cells of a row attend to each other (*feature attention*: only within
   the row, so a test row never touches the context here),
2. lets every cell attend to the cells of the same column in the context rows (*row
   attention*; the context is a learned context row plus the training rows),
3. applies an MLP to every cell.

Test rows attend to context rows only and context rows never to test rows, so, as in
the row network, the context's per-layer keys and values of the row attention (one set
per column, `(d + 1) x nhead x (n + 1) x head_dim` per layer) are what
:class:`~botorch_community.pfn.kv_cache.KVCache` stores: computed once, exact for any
number of test points. Nothing in the network depends on the order of the input
dimensions (no per-dimension embedding), so it is equivariant to permuting them.

The output is read from the target cell of a test row (a bar distribution), with the
GP head (:class:`~botorch_community.pfn.gp_head.CellGPHead`) reading each dimension's
lengthscale particles from the context row's cell of that dimension.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn, Tensor

from botorch_community.pfn.config import PFNConfig, resolve_config
from botorch_community.pfn.dtype_copies import DtypeCopies
from botorch_community.pfn.gp_head import CellGPHead
from botorch_community.pfn.kv_cache import KVCache
from botorch_community.pfn.transformer import joined_noise, PFNTransformer

#: Frequencies (times pi) of the Fourier features of an input value: a cell's
#: embedding is linear in `(2 x - 1, sin(pi f x), cos(pi f x))`, so dot products of
#: two cells' embeddings can express smooth functions of `x - x'`.
CELL_FREQUENCIES = (1.0, 2.0, 4.0, 8.0)


def cell_features(X: Tensor) -> Tensor:
    r"""Fourier features of input values.

    Args:
        X: `... x d` inputs (in the unit cube).

    Returns:
        `... x d x (1 + 2 F)` features, `F = len(CELL_FREQUENCIES)`.
    """
    freqs = torch.tensor(CELL_FREQUENCIES, dtype=X.dtype, device=X.device) * math.pi
    arg = X.unsqueeze(-1) * freqs  # `... x d x F`
    return torch.cat([2.0 * X.unsqueeze(-1) - 1.0, arg.sin(), arg.cos()], dim=-1)


class CellLayer(nn.Module):
    r"""Feature attention within rows, row attention within columns, then an MLP
    (pre-norm, residual), split so that the context's row-attention keys and values
    can be cached (:meth:`context_kv`, :meth:`row_attend`)."""

    def __init__(self, emsize: int, nhead: int, nhid: int, dropout: float = 0.0) -> None:
        super().__init__()
        if emsize % nhead != 0:
            raise ValueError(f"emsize ({emsize}) must be divisible by nhead ({nhead}).")
        self.nhead, self.head_dim = nhead, emsize // nhead
        self.norm_feature = nn.LayerNorm(emsize)
        self.feature_in = nn.Linear(emsize, 3 * emsize)
        self.feature_out = nn.Linear(emsize, emsize)
        self.norm_row = nn.LayerNorm(emsize)
        self.row_in = nn.Linear(emsize, 3 * emsize)  # q, k, v stacked
        self.row_out = nn.Linear(emsize, emsize)
        self.norm_mlp = nn.LayerNorm(emsize)
        self.mlp = nn.Sequential(nn.Linear(emsize, nhid), nn.GELU(), nn.Linear(nhid, emsize))
        self.dropout = dropout

    def _heads(self, t: Tensor) -> Tensor:
        # `... x L x e` -> `... x nhead x L x head_dim`
        return t.unflatten(-1, (self.nhead, self.head_dim)).transpose(-3, -2)

    def _drop(self, t: Tensor) -> Tensor:
        return F.dropout(t, self.dropout, self.training)

    def feature_attend(self, h: Tensor) -> Tensor:
        r"""The cells of each row attend to each other.

        Args:
            h: `B x R x C x e` cell states (`R` rows of `C = d + 1` cells).

        Returns:
            `B x R x C x e`.
        """
        B, R, C, e = h.shape
        z = self.norm_feature(h).reshape(B * R, C, e)
        q, k, v = (self._heads(t) for t in self.feature_in(z).chunk(3, dim=-1))
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # `BR x H x C x hd`
        a = a.transpose(-3, -2).reshape(B, R, C, e)
        return h + self._drop(self.feature_out(a))

    def context_kv(self, h_ctx: Tensor) -> tuple[Tensor, Tensor]:
        r"""Row-attention keys and values of context rows.

        Args:
            h_ctx: `B x (n + 1) x C x e` context cell states (after :meth:`feature_attend`).

        Returns:
            Keys and values, each `B x C x nhead x (n + 1) x head_dim`.
        """
        e = h_ctx.shape[-1]
        z = self.norm_row(h_ctx).transpose(-3, -2)  # `B x C x (n+1) x e`
        k, v = F.linear(z, self.row_in.weight[e:], self.row_in.bias[e:]).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def row_attend(self, h: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        r"""Every cell attends to the context cells of its column, then the MLP.

        Args:
            h: `B x R x C x e` cell states (after :meth:`feature_attend`).
            keys, values: `B x C x nhead x (n + 1) x head_dim` (:meth:`context_kv`).

        Returns:
            `B x R x C x e`.
        """
        B, R, C, e = h.shape
        z = self.norm_row(h).transpose(-3, -2)  # `B x C x R x e`
        q = self._heads(F.linear(z, self.row_in.weight[:e], self.row_in.bias[:e]))
        fold = lambda t: t.reshape(B * C, *t.shape[-3:])  # 4-d for the fused kernels
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(fold(q), fold(keys), fold(values), dropout_p=drop)
        a = a.reshape(B, C, self.nhead, R, self.head_dim).permute(0, 3, 1, 2, 4)
        h = h + self._drop(self.row_out(a.reshape(B, R, C, e)))
        return h + self._drop(self.mlp(self.norm_mlp(h)))


class PFNCellTransformer(PFNTransformer):
    r"""A PFN over the cells of the data table, for any `d <= num_features`
    (``tokens="cells"``; see the module docstring).

    The interface is the row network's (:meth:`forward`, :meth:`encode_context`,
    :meth:`predict`, :meth:`extend_context`, the GP head's mixture), so ``PFNModel``
    uses either. Build it with :func:`~botorch_community.pfn.build_network`.

    Example:
        >>> net = build_network(PFNConfig(num_features=100, emsize=64, nlayers=2,
        ...                               nhead=2, nhid=128, tokens="cells"))
        >>> cache = net.encode_context(train_X, train_Y)  # `n x 40`, `n x 1`
        >>> logits = net.predict(test_X, cache)
    """

    #: Tokens are `batch x rows x (d + 1) x e`.
    _ROW_DIM = -3

    def __init__(
        self,
        config: Optional[PFNConfig] = None,
        *,
        borders: Optional[Tensor] = None,
        **fields: Any,
    ) -> None:
        r"""
        Args:
            config: The architecture and inference settings, with
                ``tokens="cells"`` (or pass its fields as keyword arguments).
            borders: `(num_buckets + 1)` increasing bucket borders (standardised
                targets). Defaults to equal-mass buckets of a standard normal.
        """
        nn.Module.__init__(self)  # none of the row network's modules
        config = self._init_config_and_borders(config, borders, fields)
        if config.tokens != "cells":
            raise ValueError(
                f"PFNCellTransformer needs tokens='cells', got {config.tokens!r}."
            )
        self.metric_expanded = False  # (the row network's option; no metric term here)
        e = config.emsize
        self.x_encoder = nn.Linear(1 + 2 * len(CELL_FREQUENCIES), e)
        self.y_encoder = nn.Linear(1, e)
        # the target cell of a row without a target (test rows, pending points)
        self.nan_y_embedding = nn.Parameter(torch.zeros(e))
        if config.noise_hint:
            self.noise_encoder = nn.Linear(2, e, bias=False)
            nn.init.zeros_(self.noise_encoder.weight)
        # the learned context row: one state for all its input cells, one for its target
        self.context_cells = nn.Parameter(torch.randn(2, e) * 0.02)
        self.layers = nn.ModuleList(
            CellLayer(e, config.nhead, config.nhid, config.dropout)
            for _ in range(config.nlayers)
        )
        self.decoder = nn.Sequential(
            nn.LayerNorm(e), nn.Linear(e, config.nhid), nn.GELU(),
            nn.Linear(config.nhid, config.num_buckets),
        )  # fmt: skip
        if config.gp_head:
            self.gp = CellGPHead(e, config.gp_particles)
        self._dtype_copies = DtypeCopies()

    # ------------------------------------------------------------------ encoders
    def encode_x(self, X: Tensor) -> Tensor:
        r"""The cells of rows without a target (test rows): their `d` input cells and
        a target cell holding the missing-target embedding.

        Args:
            X: `batch_shape x m x d` inputs (expected in the unit cube).

        Returns:
            `batch_shape x m x (d + 1) x emsize`.
        """
        self._check_dim(X.shape[-1])
        cells = self.x_encoder(cell_features(X))  # `... x m x d x e`
        target = self.nan_y_embedding.expand(*X.shape[:-1], 1, -1)
        return torch.cat([cells, target], dim=-2)

    def encode_rows(
        self, train_X: Tensor, train_Y: Tensor, train_Yvar: Optional[Tensor] = None
    ) -> Tensor:
        r"""The cells of context rows `(x, y)` (without the context row).

        Args:
            train_X: `batch_shape x n x d`.
            train_Y: `batch_shape x n x 1`; NaN marks a missing target.
            train_Yvar: `batch_shape x n x 1` known noise variances (NaN: unknown),
                for networks with ``noise_hint``; added to the target cell.

        Returns:
            `batch_shape x n x (d + 1) x emsize`.
        """
        if train_Y.shape[-1] != 1:
            raise ValueError(f"train_Y must end in a 1-dim output, got {tuple(train_Y.shape)}.")
        self._check_dim(train_X.shape[-1])
        missing = torch.isnan(train_Y)  # `batch x n x 1`
        target = self.y_encoder(torch.nan_to_num(train_Y, nan=0.0))
        target = torch.where(missing, self.nan_y_embedding, target)
        self._check_noise(train_Yvar, train_Y)
        if train_Yvar is not None:
            target = target + self.encode_noise(train_Yvar)
        cells = self.x_encoder(cell_features(train_X))  # `batch x n x d x e`
        return torch.cat([cells, target.unsqueeze(-2)], dim=-2)

    def encode_train(
        self, train_X: Tensor, train_Y: Tensor, train_Yvar: Optional[Tensor] = None
    ) -> Tensor:
        r"""Context cells (:meth:`encode_rows`) with the learned context row first.

        Returns:
            `batch_shape x (n + 1) x (d + 1) x emsize`.
        """
        rows = self.encode_rows(train_X, train_Y, train_Yvar)
        d = train_X.shape[-1]
        ctx = torch.cat([self.context_cells[:1].expand(d, -1), self.context_cells[1:]], dim=0)
        ctx = ctx.to(rows.dtype).expand(*rows.shape[:-3], 1, d + 1, -1)
        return torch.cat([ctx, rows], dim=-3)

    # ---------------------------------------------------------------- layer loop
    def _run_layers(
        self,
        h: Tensor,
        context_X: Tensor,
        query_X: Optional[Tensor] = None,
        first_kv: Optional[tuple[Tensor, Tensor]] = None,
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        r"""Run the layers over a context (and, optionally, query rows attending to it).

        Args:
            h: `b x (n + 1 + m) x (d + 1) x e`: the context row, `n` context rows and
                `m` query rows.
            context_X: `b x n x d` (only its size is used).
            query_X: Unused (the rows are in `h`).
            first_kv: Unused (accepted for the row network's signature).

        Returns:
            The context row's final cells (`b x (d + 1) x e`), the query rows' final
            target cells (`b x m x e`), and per layer the context's keys and values
            (each `b x (d + 1) x nhead x (n + 1) x head_dim`).
        """
        n_ctx = context_X.shape[-2] + 1
        keys, values = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer.feature_attend(h)
            k, v = layer.context_kv(h[:, :n_ctx])
            keys.append(k)
            values.append(v)
            if i == last:  # the context row and the queries only
                h = torch.cat([h[:, :1], h[:, n_ctx:]], dim=1)
            h = layer.row_attend(h, k, v)
        return h[:, 0], h[:, 1:, -1], keys, values

    def _query_tokens(self, test_X: Tensor) -> Tensor:
        r"""Test rows' cells, flattened to `batch_shape x m x ((d + 1) e)` so that
        :meth:`predict` lays them out against the cache like row tokens."""
        return self.encode_x(test_X).flatten(-2)

    def _query_states(
        self, h: Tensor, kv_cache: KVCache, qX: Optional[Tensor], cX: Optional[Tensor]
    ) -> Tensor:
        r"""Final target-cell states (`Bc x M x e`) of the query rows `h`
        (`Bc x M x ((d + 1) e)`, from :meth:`_query_tokens`) against the cache."""
        h = h.unflatten(-1, (-1, self.config.emsize))  # `Bc x M x (d+1) x e`
        for layer, k, v in zip(self.layers, kv_cache.keys, kv_cache.values):
            h = layer.feature_attend(h)
            h = layer.row_attend(h, k.reshape(-1, *k.shape[-4:]), v.reshape(-1, *v.shape[-4:]))
        return h[..., -1, :]

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
        r"""Encode a batch of contexts, each the shared rows plus its own extra rows
        (see :meth:`PFNTransformer.extend_context`; keeps the autograd graph).

        `base_cache` is accepted and not used: every cell of a row attends to its
        row's other cells, so no layer's keys of the shared rows can be reused.

        Returns:
            A :class:`KVCache` with batch shape `extra_X.shape[:-2]` and `n + k` rows.
        """
        ctx_X, ctx_Y, extra_X, extra_Y = self._cast(ctx_X, ctx_Y, extra_X, extra_Y)
        batch_shape, (k, d) = extra_X.shape[:-2], extra_X.shape[-2:]
        Bf = math.prod(batch_shape)
        all_X = torch.cat([ctx_X.expand(Bf, -1, -1), extra_X.reshape(Bf, k, d)], dim=-2)
        all_Y = torch.cat([ctx_Y.expand(Bf, -1, -1), extra_Y.reshape(Bf, k, 1)], dim=-2)
        all_Yvar = joined_noise(ctx_Y, ctx_Yvar, extra_Y, extra_Yvar, Bf)
        h = self.encode_train(all_X, all_Y, all_Yvar)  # `Bf x (n+k+1) x (d+1) x e`
        token, _, keys, values = self._run_layers(h, all_X)
        fit = self._fit_gp(token, all_X, all_Y, all_Yvar)
        return self._make_cache(keys, values, batch_shape, all_X, fit)


def build_network(
    config: Optional[Any] = None, *, borders: Optional[Tensor] = None, **fields: Any
) -> PFNTransformer:
    r"""The network of a config: a :class:`PFNTransformer` (``tokens="rows"``)
    or a :class:`PFNCellTransformer` (``"cells"``).

    Args:
        config: A :class:`PFNConfig` or its dict form; or pass its fields as keyword
            arguments (they override the config's).
        borders: `(num_buckets + 1)` increasing bucket borders.
    """
    config = resolve_config(config, fields)
    cls = PFNCellTransformer if config.tokens == "cells" else PFNTransformer
    return cls(config, borders=borders)
