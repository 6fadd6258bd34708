#!/usr/bin/env python3
r"""An explicit key/value cache of a PFN's training context.

A PFN's training (context) tokens attend only to each other, never to test tokens.
Their per-layer keys and values therefore do not depend on the test inputs, so they
can be computed once (:meth:`PFNTransformer.encode_context`) and reused for any number
of test points (:meth:`PFNTransformer.predict`). Because the cached tensors are
constants w.r.t. the test inputs, gradients w.r.t. the test inputs are exact.

The cache is a plain object owned by whoever filled it (a ``PFNModel``, say) and passed
down to the attention layers: nothing is stored on the network modules, so two models
sharing one network never see each other's context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Optional

import torch
from torch import Tensor


@dataclass(eq=False)
class KVCache:
    r"""Per-layer keys and values of an encoded training context.

    Attributes:
        keys: One tensor per layer, each `batch_shape x nhead x (n + 1) x head_dim`
            (the extra row is the network's learned context token).
        values: Same shapes as ``keys``.
        batch_shape: The batch shape of the context (e.g. `torch.Size([])` for a single
            training set shared by all test points).
        num_context: `n`, the number of training rows encoded (without the context token).
        network_state: The network's weight state when the cache was filled (see
            :meth:`PFNTransformer.weights_state`); a cache is refused by a network whose
            weights changed since.
        fingerprint: What the owner computed the context from (training data versions,
            transforms, ...). Opaque to the network; the owner compares it to decide
            whether its cache is stale.
        context_X: `batch_shape x n x d` context inputs, kept for networks whose
            attention has a distance term (``metric_attention``) or that read out the
            context targets (``target_readout``); None otherwise.
        context_Y: `batch_shape x n x 1` standardised context targets (NaN: missing),
            kept for networks with ``target_readout``; None otherwise.
        gp_fit: The GP head's fit (:class:`~botorch_community.pfn.gp_head.GPFit`,
            batch flattened to `prod(batch_shape)`), for networks with ``gp_head``;
            None otherwise or for an empty context.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    batch_shape: torch.Size
    num_context: int
    network_state: Hashable = None
    fingerprint: Hashable = None
    extras: dict = field(default_factory=dict)
    context_X: Optional[Tensor] = None
    context_Y: Optional[Tensor] = None
    gp_fit: Optional[Any] = None

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    def nbytes(self) -> int:
        r"""Memory held by the cached tensors, in bytes."""
        extra = tuple(t for t in (self.context_X, self.context_Y) if t is not None)
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
