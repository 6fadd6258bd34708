#!/usr/bin/env python3
r"""Input checks that can wait for the result instead of stopping the device.

A check such as "X is finite" needs the device's answer on the host: on a GPU that is a
synchronisation, which CUDA graph capture forbids and which costs a round trip per call.
Code that validates its inputs calls :func:`check_or_defer`: it raises at once as usual,
unless a :func:`deferred_checks` block is collecting; then the check's boolean tensor is
recorded and the block's owner (e.g.
:class:`~botorch_community.acquisition.cuda_graph.CUDAGraphAcquisitionFunction`) reads
all of them together with the result, and re-runs the call eagerly to raise the error
if one failed.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

_COLLECTOR: ContextVar[Optional[list[Tensor]]] = ContextVar("_deferred_checks", default=None)


def check_or_defer(ok: Tensor, error: Callable[[], Exception]) -> None:
    r"""Raise `error()` unless the 0-dim bool tensor `ok` is true, or record `ok` in
    the innermost :func:`deferred_checks` block."""
    collector = _COLLECTOR.get()
    if collector is not None:
        collector.append(ok.reshape(()))
    elif not bool(ok):
        raise error()


def deferring_checks() -> bool:
    r"""Whether checks are being collected (callers skip host-side work, e.g. warnings
    that need a value)."""
    return _COLLECTOR.get() is not None


@contextmanager
def deferred_checks() -> Iterator[list[Tensor]]:
    r"""Collect the checks of the block instead of raising.

    Yields:
        The list the block's checks are appended to (0-dim bool tensors); all true
        means every check passed (see :func:`all_passed`).
    """
    checks: list[Tensor] = []
    token = _COLLECTOR.set(checks)
    try:
        yield checks
    finally:
        _COLLECTOR.reset(token)


def all_passed(checks: list[Tensor], like: Tensor) -> Tensor:
    r"""One 0-dim bool tensor on `like`'s device: whether all `checks` passed."""
    if not checks:
        return torch.ones((), dtype=torch.bool, device=like.device)
    return torch.stack([c.to(like.device) for c in checks]).all()
