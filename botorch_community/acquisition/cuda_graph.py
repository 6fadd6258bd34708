#!/usr/bin/env python3
r"""Acquisition calls replayed from CUDA graphs.

On a GPU, one cached acquisition call (value and gradient w.r.t. the candidates, as
each L-BFGS-B step of ``optimize_acqf`` asks for) is a few hundred small kernels: the
launches, not the arithmetic, take the time. :class:`CUDAGraphAcquisitionFunction`
captures the whole call (forward and backward) once per batch shape as a CUDA graph and
replays it: one launch per call, no Python in between.

A captured call reads the model's cached context where it lay at capture time, so the
wrapper compares the model's :meth:`~botorch_community.models.prior_fitted_network.PFNModel.replay_state`
(the held cache, the network's weights, the training data) and the acquisition
function's own tensors (``best_f``, ``X_pending``) before every replay and captures
again when anything changed. Input checks (finite candidates) are read back with the
result, and a failed one re-runs the call eagerly to raise its error.

Batch independence: the wrapped acquisition function must compute each t-batch
element's value from that element alone (analytic acquisition functions such as the
discretized EI / LogEI / PI / UCB, or BoTorch's analytic ones). The batch is padded to
the next power of two with copies of its last element, so the ``num_restarts``
shrinking batches of BoTorch's parallel L-BFGS-B share a few graphs.

Example:
    >>> acqf = CUDAGraphAcquisitionFunction(DiscretizedLogExpectedImprovement(model, best_f))
    >>> with model.cache_training_context():
    ...     candidate, value = optimize_acqf(acqf, bounds, q=1, num_restarts=32,
    ...                                      raw_samples=1024)
"""

from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
from botorch.acquisition import AcquisitionFunction
from torch import Tensor

from botorch_community.models.deferred_checks import all_passed, deferred_checks
from botorch_community.models.prior_fitted_network import _Same, _tensors_state

#: Batches above this size run eagerly (a graph per power of two up to it).
MAX_GRAPH_BATCH = 4096


@dataclass(eq=False)
class _CapturedCall:
    r"""One captured call: static input, outputs and the checks' verdict."""

    graph: "torch.cuda.CUDAGraph"
    X: Tensor  # `B x q x d` static input (a leaf; requires grad for gradient graphs)
    value: Tensor  # `B`
    grad: Optional[Tensor]  # `B x q x d`, d value / dX
    ok: Tensor  # 0-dim bool: every deferred input check passed


def _where(error: BaseException, frames: int = 4) -> str:
    r"""The innermost source lines of `error`'s traceback (where a call synchronised)."""
    return "".join(traceback.format_tb(error.__traceback__)[-frames:])


class _Replayed(torch.autograd.Function):
    r"""The replayed values, with the captured gradient as their backward (each value
    depends on its own t-batch element only, so the vector-Jacobian product is a
    per-element scaling)."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx: Any, grad_value: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad_value.reshape(-1, *([1] * (grad.dim() - 1))) * grad, None, None


class CUDAGraphAcquisitionFunction(AcquisitionFunction):
    r"""An acquisition function whose CUDA calls replay captured graphs.

    Captured: a ``PFNModel`` with its default predictive (``predictive="gp"``: the GP
    head's mixture; the network's full output runs the transformer per call and is not
    captured). Calls on other devices, with other models, with a model that holds no
    cached context (outside its ``cache_training_context()``), or that would synchronise
    with the host (found by a warm-up call with host syncs made errors, before any
    capture) run the wrapped function as is. The first ``warmup_calls`` calls of each
    shape also run eagerly (they encode the context and fill the model's memos), the next
    one captures.
    """

    def __init__(self, acq_function: AcquisitionFunction, warmup_calls: int = 1) -> None:
        r"""
        Args:
            acq_function: A batch-independent acquisition function (see the module
                docstring) whose model has a ``replay_state()`` (``PFNModel``).
            warmup_calls: Eager calls per batch shape before it is captured.
        """
        super().__init__(model=acq_function.model)
        self.acq_function = acq_function
        self.warmup_calls = warmup_calls
        self._graphs: dict[tuple, _CapturedCall] = {}
        self._seen: dict[tuple, int] = {}
        self._failed: set[tuple] = set()
        self._state: Optional[tuple] = None
        self._pool: Any = None
        self.num_captures = 0  # diagnostics
        self.num_replays = 0

    # BoTorch's optimizers read and set these on the acquisition function they get.
    @property
    def X_pending(self) -> Optional[Tensor]:  # type: ignore[override]
        return self.acq_function.X_pending

    def set_X_pending(self, X_pending: Optional[Tensor] = None) -> None:
        self.acq_function.set_X_pending(X_pending)

    def forward(self, X: Tensor) -> Tensor:
        r"""The wrapped function's values at `X` (`b x q x d`), `b`."""
        if X.device.type != "cuda" or X.dim() != 3 or torch.cuda.is_current_stream_capturing():
            return self.acq_function(X)
        state = self._replay_state()
        if state is None:
            return self.acq_function(X)
        if state != self._state:  # new context, data or incumbent: capture again
            self._graphs.clear()
            self._seen.clear()
            self._state = state
        b = X.shape[0]
        B = 1 << max(b - 1, 0).bit_length()  # the next power of two
        needs_grad = torch.is_grad_enabled() and X.requires_grad
        key = (B, tuple(X.shape[1:]), X.dtype, X.device, needs_grad)
        if B > MAX_GRAPH_BATCH or key in self._failed:
            return self.acq_function(X)
        call = self._graphs.get(key)
        if call is None:
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
            if seen < self.warmup_calls:
                return self.acq_function(X)
            call = self._capture(X, key)
            if call is None:
                return self.acq_function(X)
        with torch.no_grad():
            call.X[:b].copy_(X)
            if B > b:  # padding: copies of the last candidate
                call.X[b:].copy_(X[-1:].expand(B - b, *X.shape[1:]))
        call.graph.replay()
        self.num_replays += 1
        if not bool(call.ok):  # a failed input check: the eager call raises its error
            return self.acq_function(X)
        value = call.value[:b].clone()
        if not needs_grad:
            return value
        return _Replayed.apply(X, value, call.grad[:b].clone())

    def _replay_state(self) -> Optional[tuple]:
        model = self.acq_function.model
        if getattr(model, "predictive", None) != "gp":
            # only the GP head's path is known to be capturable (the network's full
            # output runs the transformer per call): a failed capture can leave the
            # CUDA allocator unusable, so other paths are never tried
            return None
        replay_state = getattr(model, "replay_state", None)
        model_state = None if replay_state is None else replay_state()
        if model_state is None:
            return None
        acqf = self.acq_function
        own = tuple(t for t in (*acqf._buffers.values(), *vars(acqf).values(), acqf.X_pending)
                    if isinstance(t, Tensor))  # fmt: skip
        return model_state, tuple(_Same(t) for t in own), _tensors_state(own)

    def _run(self, X: Tensor, needs_grad: bool) -> tuple[Tensor, Optional[Tensor], Tensor]:
        r"""One call on the static input `X`, its input checks deferred."""
        with deferred_checks() as checks, torch.set_grad_enabled(needs_grad):
            value = self.acq_function(X)
            grad = torch.autograd.grad(value.sum(), X)[0] if needs_grad else None
            ok = all_passed(checks, value)
        return value.detach(), grad, ok

    def _capture(self, X: Tensor, key: tuple) -> Optional[_CapturedCall]:
        B, needs_grad = key[0], key[-1]
        static_X = torch.empty(B, *X.shape[1:], dtype=X.dtype, device=X.device)
        with torch.no_grad():
            static_X[: X.shape[0]].copy_(X)
            static_X[X.shape[0] :].copy_(X[-1:].expand(B - X.shape[0], *X.shape[1:]))
        static_X.requires_grad_(needs_grad)
        # warm-up on a side stream (lazy library handles), as CUDA graphs require; with
        # host syncs made errors, so a call that would break the capture is found here,
        # before any capture starts
        side = torch.cuda.Stream(device=X.device)
        side.wait_stream(torch.cuda.current_stream(X.device))
        mode = torch.cuda.get_sync_debug_mode()
        try:
            torch.cuda.set_sync_debug_mode("error")
            with torch.cuda.stream(side):
                self._run(static_X, needs_grad)
        except RuntimeError as e:
            self._failed.add(key)
            warnings.warn(
                f"{type(self.acq_function).__name__} synchronises with the host, so it is "
                f"not captured for batch shape {tuple(static_X.shape)}; those calls run "
                f"eagerly. Reason: {e}; at:\n{_where(e)}",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        finally:
            torch.cuda.set_sync_debug_mode(mode)
            torch.cuda.current_stream(X.device).wait_stream(side)
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                value, grad, ok = self._run(static_X, needs_grad)
        except RuntimeError as e:  # e.g. a host sync inside the call
            self._failed.add(key)
            warnings.warn(
                f"CUDA graph capture of {type(self.acq_function).__name__} failed for "
                f"batch shape {tuple(static_X.shape)}; those calls run eagerly. Reason: {e}",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        if value.shape != (B,):
            self._failed.add(key)
            return None
        self.num_captures += 1
        call = _CapturedCall(graph, static_X, value, grad, ok)
        self._graphs[key] = call
        return call
