#!/usr/bin/env python3
r"""An explicit key/value cache of a PFN's training context.

A PFN's training (context) tokens attend only to each other, never to test tokens.
Their per-layer keys and values therefore do not depend on the test inputs, so they
can be computed once (:meth:`PFNTransformer.encode_context`) and reused for any number
of test points (:meth:`PFNTransformer.predict`). Because the cached tensors are
constants w.r.t. the test inputs, gradients w.r.t. the test inputs are exact.

The cache is a plain object owned by whoever filled it (a ``PFNModel``, say) and passed
down to the attention layers: nothing is stored on the network modules, so two models
sharing one network never see each other's context. Whether a cache is still valid for
the owner's data and the network's weights is the owner's decision (``PFNModel`` keeps
what it encoded the cache from next to it); the cache itself holds only tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor


@dataclass(eq=False)
class KVCache:
    r"""Per-layer keys and values of an encoded training context.

    Attributes:
        keys: One tensor per layer, each `batch_shape x nhead x (n + 1) x head_dim`
            (the extra row is the network's learned context token); for a cells network
            (:class:`~botorch_community.pfn.cell_transformer.PFNCellTransformer`) one set
            per column, `batch_shape x (d + 1) x nhead x (n + 1) x head_dim`.
        values: Same shapes as ``keys``. Both empty where a warm start skipped the
            network pass (``PFNTransformer.encode_context(..., network_states=False)``):
            the cache then serves the GP head's predictive only.
        batch_shape: The batch shape of the context (e.g. `torch.Size([])` for a single
            training set shared by all test points).
        num_context: `n`, the number of training rows encoded (without the context token).
        context_X: `batch_shape x n x d` context inputs, kept for networks whose
            attention has a distance term (``metric_attention``) or that have a GP
            head; None otherwise.
        gp_fit: The GP head's fit (:class:`~botorch_community.pfn.gp_head.GPFit`,
            batch flattened to `prod(batch_shape)`), for networks with ``gp_head``;
            None otherwise or for an empty context.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    batch_shape: torch.Size
    num_context: int
    context_X: Optional[Tensor] = None
    gp_fit: Optional[Any] = None

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def has_network_states(self) -> bool:
        r"""Whether the cache holds the layers' keys/values (False: the GP head's fit
        and the context inputs only, from a warm start that skipped the network)."""
        return len(self.keys) > 0

    @property
    def dtype(self) -> torch.dtype:
        return (self.keys[0] if self.keys else self.context_X).dtype

    @property
    def device(self) -> torch.device:
        return (self.keys[0] if self.keys else self.context_X).device

    def nbytes(self) -> int:
        r"""Memory held by the cached tensors, in bytes."""
        extra = () if self.context_X is None else (self.context_X,)
        if self.gp_fit is not None:
            extra = extra + tuple(self.gp_fit.tensors())
        return sum(
            t.numel() * t.element_size() for t in (*self.keys, *self.values, *extra)
        )

    def __repr__(self) -> str:
        return (
            f"KVCache(layers={self.num_layers}, batch_shape={tuple(self.batch_shape)}, "
            f"num_context={self.num_context}, dtype={self.dtype}, "
            f"MB={self.nbytes() / 2**20:.2f})"
        )


def to_cache_layout(
    h: Tensor, cache_batch_shape: torch.Size
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    r"""Arrange test tokens as `prod(cache batch) x M x e` query sequences.

    Batch dimensions over which the cache is singleton join the query axis, so a batch
    of 512 candidates against a batch-1 context is one sequence of 512 queries attending
    to one copy of the context (nothing is copied).

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
