#!/usr/bin/env python3
r"""The one target-standardisation convention shared by PFN training and inference.

The network always sees training targets standardised by the mean and standard deviation
of the *training* (context) targets of the same dataset. Training the network
(:mod:`botorch_community.pfn.train`) and predicting with it
(:class:`~botorch_community.models.prior_fitted_network.PFNModel`) both call
:func:`context_moments`, so they agree exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Targets whose standard deviation is at most this many units of round-off of their
#: magnitude (``eps(dtype) * mean|y|``) are treated as constant (scale 1): their spread is
#: round-off, not signal. The threshold is relative, so `y * 1e-9` is standardised like
#: `y` (an absolute one treated it as constant and returned a posterior 1e9 times too
#: wide).
CONSTANT_REL_TOL = 1.0
#: Also treated as constant: an exactly zero spread, and any below this absolute floor
#: (subnormal ranges).
MIN_STD = 1e-300


def context_moments(train_Y: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean and standard deviation used to standardise a dataset's targets.

    NaN targets (pending points) are ignored. With fewer than two observed targets, or
    targets constant up to round-off (:data:`CONSTANT_REL_TOL`), the scale is 1; with
    none, the mean is 0.

    Args:
        train_Y: `batch_shape x n x 1` training targets.

    Returns:
        `mean` and `std`, each `batch_shape x 1 x 1`.
    """
    observed = ~torch.isnan(train_Y)
    count = observed.sum(dim=-2, keepdim=True)  # `batch x 1 x 1`
    y0 = torch.where(observed, train_Y, torch.zeros_like(train_Y))
    mean = y0.sum(dim=-2, keepdim=True) / count.clamp_min(1)
    sq = torch.where(observed, (train_Y - mean) ** 2, torch.zeros_like(train_Y))
    var = sq.sum(dim=-2, keepdim=True) / (count - 1).clamp_min(1)
    std = var.sqrt()
    magnitude = torch.where(observed, train_Y.abs(), torch.zeros_like(train_Y)).sum(
        dim=-2, keepdim=True
    ) / count.clamp_min(1)  # mean |y| (`amax` fails on empty contexts)
    tol = CONSTANT_REL_TOL * torch.finfo(train_Y.dtype).eps * magnitude
    varies = (count >= 2) & (std > tol) & (std > MIN_STD)
    std = torch.where(varies, std, torch.ones_like(std))
    return mean, std
