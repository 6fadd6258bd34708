#!/usr/bin/env python3
r"""The bar (Riemann) distribution used to train PFNs: bucket borders and the NLL.

The network outputs logits over `K` buckets `[b_i, b_{i+1})` of the standardised target.
The density is piecewise constant, `p_i / w_i` in bucket `i` (`w_i = b_{i+1} - b_i`), so
the NLL of a target `y` in bucket `i` is `-log(p_i / w_i)`. Targets outside the borders
are counted in the edge buckets (clamped), so every target has a finite loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "borders_from_samples", "bucket_index", "bar_nll", "gaussian_bucket_probs",
    "log_gaussian_bucket_probs", "mix_log_probs",
]  # fmt: skip


def borders_from_samples(y: Tensor, num_buckets: int, widen: float = 0.1) -> Tensor:
    r"""Equal-mass bucket borders fitted on samples of (standardised) targets.

    The inner borders are empirical quantiles `k / K` (`k = 1..K-1`); the outer borders
    are the sample minimum and maximum, moved outward by `widen` times the width of the
    adjacent bucket (plus a tiny absolute margin), so the extremes lie strictly inside.
    Ties (e.g. from discrete samples) are separated so the borders strictly increase.

    Args:
        y: Samples, any shape; non-finite values are ignored.
        num_buckets: Number of buckets `K` (at least 1).
        widen: How far the outer borders move beyond the extremes, relative to the
            edge buckets' widths.

    Returns:
        A `(K + 1)`-dim float32 tensor of strictly increasing borders (on `y`'s device).
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be positive, got {num_buckets}.")
    y = y.detach().reshape(-1).to(torch.float64)
    y = y[torch.isfinite(y)]
    if y.numel() < num_buckets + 1:
        raise ValueError(
            f"Need at least num_buckets + 1 = {num_buckets + 1} finite samples, got "
            f"{y.numel()}."
        )
    ys, _ = torch.sort(y)
    N = ys.numel()
    pos = torch.arange(1, num_buckets, dtype=torch.float64, device=ys.device) * (
        (N - 1) / num_buckets
    )
    lo_i = pos.floor().long()
    frac = pos - lo_i
    inner = ys[lo_i] * (1 - frac) + ys[(lo_i + 1).clamp_max(N - 1)] * frac
    lo, hi = ys[0], ys[-1]
    scale = float((hi - lo).abs().clamp_min(1e-6))
    first = inner[0] if num_buckets > 1 else hi
    last = inner[-1] if num_buckets > 1 else lo
    lo = lo - widen * (first - lo) - 1e-6 * scale
    hi = hi + widen * (hi - last) + 1e-6 * scale
    borders = torch.cat([lo.view(1), inner, hi.view(1)])
    # strictly increasing in float32: enforce a minimal gap relative to the magnitude
    out = borders.to(torch.float32).cpu().tolist()
    for i in range(1, len(out)):
        if not out[i] > out[i - 1]:
            gap = max(abs(out[i - 1]) * 1e-6, 1e-7)
            out[i] = out[i - 1] + gap
    res = torch.tensor(out, dtype=torch.float32, device=y.device)
    assert bool((res[1:] > res[:-1]).all())
    return res


def bucket_index(y: Tensor, borders: Tensor) -> Tensor:
    r"""The bucket of each target: `i` with `b_i <= y < b_{i+1}`, clamped to
    `[0, K - 1]` (targets outside the borders go to the edge buckets)."""
    K = borders.numel() - 1
    idx = torch.searchsorted(borders.to(y.dtype).contiguous(), y.contiguous(), right=True) - 1
    return idx.clamp(0, K - 1)


def bar_nll(logits: Tensor, y: Tensor, borders: Tensor) -> Tensor:
    r"""Negative log-likelihood of targets under the bar distribution.

    Args:
        logits: `batch_shape x K` logits (any float dtype; computed in float32 at least).
        y: `batch_shape` or `batch_shape x 1` targets.
        borders: `(K + 1)` increasing borders.

    Returns:
        `batch_shape` NLLs, `-log(p_i / w_i)` of each target's bucket `i` (NaN where the
        target is NaN).
    """
    if y.dim() == logits.dim() and y.shape[-1] == 1:
        y = y.squeeze(-1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    borders = borders.to(device=logits.device, dtype=logits.dtype)
    y = y.to(logits.dtype)
    widths = borders[1:] - borders[:-1]
    idx = bucket_index(torch.nan_to_num(y), borders)
    # -log softmax_i = logsumexp - logit_i (no K-sized log-probability tensor is kept)
    logit_i = logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    nll = torch.logsumexp(logits, dim=-1) - logit_i + torch.log(widths[idx])
    return torch.where(torch.isnan(y), torch.full_like(nll, float("nan")), nll)


def gaussian_bucket_probs(mu: Tensor, sigma: Tensor, borders: Tensor) -> Tensor:
    r"""Probabilities of the buckets under `N(mu, sigma^2)`, accurate in both tails.

    One normal tail per border, `t_k = Phi(-|z_k|) = erfc(|z_k| / sqrt(2)) / 2`: a bucket
    above the mean is `t_lo - t_hi`, one below it `t_hi - t_lo` (both `|t_lo - t_hi|`),
    and the one holding the mean `1 - t_lo - t_hi`, so no bucket takes the difference of
    two CDFs near 1. (`torch.special.ndtr` is `(1 + erf) / 2`, which loses the lower
    tail beyond about 5 standard deviations; `erfc` keeps it.) The bucket holding the
    mean is patched in afterwards (one per distribution), so the `K`-sized work is a few
    elementwise passes.

    Args:
        mu: `batch_shape` means.
        sigma: `batch_shape` standard deviations.
        borders: `K + 1` increasing borders, or `batch_shape x (K + 1)` (broadcast).

    Returns:
        `batch_shape x K` probabilities (not floored: far tails may be 0).
    """
    scale = math.sqrt(0.5) / sigma.unsqueeze(-1)
    u = (borders - mu.unsqueeze(-1)) * scale  # `z / sqrt(2)`, `batch_shape x (K + 1)`
    t = 0.5 * torch.special.erfc(u.abs())  # the smaller tail at each border
    p = (t[..., :-1] - t[..., 1:]).abs()
    # the bucket holding the mean: `z_lo <= 0 < z_hi`, `k = #{z <= 0} - 1`
    K = p.shape[-1]
    k = (u <= 0).sum(-1, keepdim=True) - 1  # `batch_shape x 1`
    inside = (k >= 0) & (k < K)
    kc = k.clamp(0, K - 1)
    t_lo, t_hi = t.gather(-1, kc), t.gather(-1, kc + 1)
    center = torch.where(inside, 1 - t_lo - t_hi, p.gather(-1, kc))
    return p.scatter(-1, kc, center)


def log_gaussian_bucket_probs(mu: Tensor, sigma: Tensor, borders: Tensor) -> Tensor:
    r"""Log-probabilities of the buckets under `N(mu, sigma^2)`.

    Args:
        mu: `batch_shape` means.
        sigma: `batch_shape` standard deviations.
        borders: `K + 1` increasing borders, or `batch_shape x (K + 1)` (broadcast).

    Returns:
        `batch_shape x K`, floored at `log(1e-30)` (no `-inf`, no NaN gradients).
    """
    return gaussian_bucket_probs(mu, sigma, borders).clamp_min(1e-30).log()


def mix_log_probs(log_p: Tensor, log_q: Tensor, omega: Tensor) -> Tensor:
    r"""`log((1 - w) p + w q)` with `w = sigmoid(omega)` (`omega` broadcasts against
    `log_p` and `log_q`), computed without leaving log space."""
    return torch.logaddexp(log_p + F.logsigmoid(-omega), log_q + F.logsigmoid(omega))
