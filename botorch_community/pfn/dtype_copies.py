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
        self,
        source: "PFNTransformer",
        dtype: torch.dtype,
        state: Hashable,
        verify: bool = False,
    ) -> "PFNTransformer":
        r"""`source` computing in `dtype`, for the source's weights state `state`.

        Args:
            source: The network the copy is made from.
            dtype: A floating-point dtype other than the source's.
            state: ``source.weights_state()`` (computed once by the caller).
            verify: Also compare a held copy with the source's current weights (one
                pass over them) and rebuild it if they differ: catches edits that bypass
                the version counters of ``state`` (through ``.data``). A new model does
                this once, so it never starts from stale weights.

        Returns:
            An inference-only copy (no gradients w.r.t. its weights) on the source's
            device, in the source's train/eval mode.
        """
        hit = self._copies.get(dtype)
        if hit is not None and hit[0] == state and verify and not _same_weights(source, hit[1]):
            hit = None
        if hit is None or hit[0] != state:
            copy = type(source)(source.config, borders=source.borders.detach().clone())
            copy.load_state_dict(source.state_dict())
            copy = copy.to(device=source.borders.device, dtype=dtype).requires_grad_(False)
            hit = (state, copy)
            self._copies[dtype] = hit
        if hit[1].training != source.training:  # `train()` walks every module: only if needed
            hit[1].train(source.training)
        return hit[1]

    def __len__(self) -> int:
        return len(self._copies)


@torch.no_grad()
def _same_weights(source: "PFNTransformer", copy: "PFNTransformer") -> bool:
    r"""Whether `copy` holds `source`'s current parameters and buffers (cast)."""
    ours = dict(source.state_dict())
    theirs = copy.state_dict()
    if ours.keys() != theirs.keys():
        return False
    return all(torch.equal(ours[k].to(theirs[k]), theirs[k]) for k in ours)
