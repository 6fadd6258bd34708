#!/usr/bin/env python3
r"""Inference-only copies of a network in another dtype, shared by every user.

``PFNModel`` evaluates a float32 network in float64 for float64 data (L-BFGS-B then sees
an acquisition surface free of float32 round-off). The copy is made once per source
weights state and held by the source network, so every model sharing the network shares
one copy; it is rebuilt when the source's weights or inference settings change.
"""

from __future__ import annotations

from typing import Hashable, TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from botorch_community.pfn.transformer import PFNTransformer


class DtypeCopies:
    r"""The dtype copies of one network, keyed by dtype, each valid for one weights
    state of its source."""

    __slots__ = ("_copies",)

    def __init__(self) -> None:
        self._copies: dict[torch.dtype, tuple[Hashable, "PFNTransformer"]] = {}

    def get(
        self, source: "PFNTransformer", dtype: torch.dtype, state: Hashable
    ) -> "PFNTransformer":
        r"""`source` computing in `dtype`, for the source's weights state `state`.

        Args:
            source: The network the copy is made from.
            dtype: A floating-point dtype other than the source's.
            state: ``source.weights_state()`` (computed once by the caller).

        Returns:
            An inference-only copy (no gradients w.r.t. its weights) on the source's
            device, in the source's train/eval mode.
        """
        hit = self._copies.get(dtype)
        if hit is None or hit[0] != state:
            copy = type(source)(source.config, borders=source.borders.detach().clone())
            copy.load_state_dict(source.state_dict())
            copy = copy.to(device=source.borders.device, dtype=dtype).requires_grad_(False)
            hit = (state, copy)
            self._copies[dtype] = hit
        hit[1].train(source.training)
        return hit[1]

    def __len__(self) -> int:
        return len(self._copies)
