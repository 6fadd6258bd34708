#!/usr/bin/env python3
r"""Input constructors of the discretized acquisition functions (used by Ax).

BoTorch's ``get_acqf_input_constructor`` finds them once this module has been imported,
which :mod:`botorch_community.acquisition` (the package) does: any import of
``botorch_community.acquisition.<anything>`` registers them, before the submodule runs.

botorch's own copy of ``botorch_community.acquisition.input_constructors`` (not shadowed
by this package) registers upstream's constructors for the same classes;
:func:`_register_input_constructors` makes ours win whatever the import order.

A ``ScalarizedPosteriorTransform`` with a single weight of ``+-1`` (what Ax passes:
``[-1]`` for minimization) becomes ``maximize``, so ``best_f`` is in the model's outcome
space.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Hashable
from typing import Any

from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.input_constructors import (
    _register_acqf_input_constructor,
    allow_only_specific_variable_kwargs,
)
from botorch.acquisition.objective import (
    IdentityMCObjective,
    LinearMCObjective,
    MCAcquisitionObjective,
    PosteriorTransform,
    ScalarizedPosteriorTransform,
)
from botorch.exceptions.errors import UnsupportedError
from botorch.models.model import Model
import torch
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from botorch_community.acquisition.discretized import (
    _direction_from_transform,
    DiscretizedExpectedImprovement,
    DiscretizedLogExpectedImprovement,
    DiscretizedNoisyExpectedImprovement,
    DiscretizedProbabilityOfImprovement,
    DiscretizedUpperConfidenceBound,
)

__all__ = [
    "construct_inputs_discretized_best_f",
    "construct_inputs_discretized_noisy_ei",
    "construct_inputs_discretized_ucb",
]




def _resolve_direction(
    posterior_transform: PosteriorTransform | None,
    objective: MCAcquisitionObjective | None,
    maximize: bool,
) -> tuple[PosteriorTransform | None, bool]:
    r"""Turn a ``[+-1]`` scalarization into ``maximize`` and drop it.

    Returns the posterior transform still to be applied (only for general affine
    scalarizations) and the resolved ``maximize`` flag.
    """
    if objective is not None and not isinstance(objective, IdentityMCObjective):
        if isinstance(objective, LinearMCObjective) and objective.weights.numel() == 1:
            if posterior_transform is not None:
                raise UnsupportedError(
                    "Pass either `objective` or `posterior_transform`, not both."
                )
            posterior_transform = ScalarizedPosteriorTransform(
                weights=objective.weights.reshape(1)
            )
        else:
            raise UnsupportedError(
                "Discretized acquisition functions support no MC objective other than "
                "`IdentityMCObjective` or a single-weight `LinearMCObjective`; got "
                f"{type(objective).__name__}. Use a `ScalarizedPosteriorTransform`."
            )
    weight, offset = _direction_from_transform(posterior_transform)
    if abs(weight) == 1.0 and offset == 0.0:
        return None, maximize == (weight > 0)
    return posterior_transform, maximize


def _default_best_f(
    training_data: SupervisedDataset | dict[Hashable, SupervisedDataset] | None,
    posterior_transform: PosteriorTransform | None,
    maximize: bool,
    model: Model | None = None,
) -> Tensor:
    r"""Best observed objective value (max, or min if ``maximize=False``).

    Taken from the model's own single-output training targets where it has them (a
    ``PFNModel``): Ax passes the data of *all* metrics as ``training_data`` but a model
    already subset to the objective, so tracked metrics do not get in the way.
    """
    train_Y = getattr(model, "train_Y", None)
    if torch.is_tensor(train_Y) and train_Y.dim() == 2 and train_Y.shape[-1] == 1:
        Y = train_Y if posterior_transform is None else posterior_transform.evaluate(train_Y)
        return Y.max() if maximize else Y.min()
    if training_data is None:
        raise ValueError(
            "Either `best_f` or `training_data` (to default `best_f` to the best "
            "observed value) is required."
        )
    if isinstance(training_data, dict):
        if len(training_data) != 1:
            raise UnsupportedError(
                "Discretized acquisition functions need single-output training data "
                f"to default `best_f`; got {len(training_data)} datasets. Pass "
                "`best_f` explicitly."
            )
        training_data = next(iter(training_data.values()))
    Y = training_data.Y
    if posterior_transform is not None:
        Y = posterior_transform.evaluate(Y)
    elif Y.shape[-1] != 1:
        raise UnsupportedError(
            f"Training data has {Y.shape[-1]} outputs; discretized acquisition "
            "functions need one (or a `ScalarizedPosteriorTransform`)."
        )
    return Y.max() if maximize else Y.min()


def construct_inputs_discretized_best_f(
    model: Model,
    training_data: SupervisedDataset | dict[Hashable, SupervisedDataset] | None = None,
    posterior_transform: PosteriorTransform | None = None,
    objective: MCAcquisitionObjective | None = None,
    X_pending: Tensor | None = None,
    best_f: float | Tensor | None = None,
    maximize: bool = True,
) -> dict[str, Any]:
    r"""Inputs for discretized EI, LogEI and PI.

    A single-weight ``ScalarizedPosteriorTransform`` with weight ``+-1`` (Ax uses
    ``[-1.0]`` for minimization) is converted to ``maximize``, so ``best_f`` is in the
    model's outcome space: by default the best observed training ``Y`` (its max when
    maximizing, its min when minimizing). A given ``best_f`` is taken in that space.
    """
    posterior_transform, maximize = _resolve_direction(
        posterior_transform, objective, maximize
    )
    if best_f is None:
        best_f = _default_best_f(training_data, posterior_transform, maximize, model)
    return {
        "model": model,
        "best_f": best_f,
        "posterior_transform": posterior_transform,
        "maximize": maximize,
        "X_pending": X_pending,
    }


def construct_inputs_discretized_noisy_ei(
    model: Model,
    posterior_transform: PosteriorTransform | None = None,
    objective: MCAcquisitionObjective | None = None,
    X_pending: Tensor | None = None,
    maximize: bool = True,
) -> dict[str, Any]:
    r"""Inputs for discretized noisy EI (``training_data`` is not needed)."""
    posterior_transform, maximize = _resolve_direction(
        posterior_transform, objective, maximize
    )
    return {
        "model": model,
        "posterior_transform": posterior_transform,
        "maximize": maximize,
        "X_pending": X_pending,
    }


def construct_inputs_discretized_ucb(
    model: Model,
    posterior_transform: PosteriorTransform | None = None,
    objective: MCAcquisitionObjective | None = None,
    X_pending: Tensor | None = None,
    beta: float = 0.2,
    quantile: float | None = None,
    maximize: bool = True,
) -> dict[str, Any]:
    r"""Inputs for the quantile-based discretized UCB."""
    posterior_transform, maximize = _resolve_direction(
        posterior_transform, objective, maximize
    )
    return {
        "model": model,
        "beta": beta,
        "quantile": quantile,
        "posterior_transform": posterior_transform,
        "maximize": maximize,
        "X_pending": X_pending,
    }


_INPUT_CONSTRUCTORS = {
    DiscretizedExpectedImprovement: construct_inputs_discretized_best_f,
    DiscretizedLogExpectedImprovement: construct_inputs_discretized_best_f,
    DiscretizedProbabilityOfImprovement: construct_inputs_discretized_best_f,
    DiscretizedNoisyExpectedImprovement: construct_inputs_discretized_noisy_ei,
    DiscretizedUpperConfidenceBound: construct_inputs_discretized_ucb,
}

_UPSTREAM_INPUT_CONSTRUCTORS = "botorch_community.acquisition.input_constructors"


def _skip_ours(decorator: Any) -> Any:
    r"""Wrap ``acqf_input_constructor`` so that it leaves our classes alone."""

    def wrapped(*acqf_cls: type[AcquisitionFunction]) -> Any:
        others = [c for c in acqf_cls if c not in _INPUT_CONSTRUCTORS]
        if others:
            return decorator(*others)
        return lambda method: method

    return wrapped


def _register_input_constructors() -> None:
    r"""Register our input constructors, overriding those of botorch's copy.

    botorch's ``botorch_community.acquisition.input_constructors`` (not shadowed by
    this package) imports the classes of ``discretized`` (ours, since our module
    shadows upstream's) and registers its own constructors for them with a decorator
    that refuses duplicates. To make ours win regardless of import order:

    * if that module has not been imported, import it first (it registers its
      constructors for our classes), then overwrite the registry entries (the usual
      case: our package's ``__init__`` runs this before any submodule is imported);
    * if it is being imported right now (it imported our classes), its decorator has
      not run yet: make it skip our classes, then register ours.

    Runs once, when this module is first imported.
    """
    upstream = sys.modules.get(_UPSTREAM_INPUT_CONSTRUCTORS)
    if upstream is None:
        try:
            importlib.import_module(_UPSTREAM_INPUT_CONSTRUCTORS)
        except ImportError:  # pragma: no cover - botorch without community modules
            pass
    elif getattr(getattr(upstream, "__spec__", None), "_initializing", False):
        if hasattr(upstream, "acqf_input_constructor"):
            upstream.acqf_input_constructor = _skip_ours(
                upstream.acqf_input_constructor
            )
    for acqf_cls, constructor in _INPUT_CONSTRUCTORS.items():
        _register_acqf_input_constructor(
            acqf_cls, allow_only_specific_variable_kwargs(constructor)
        )


_register_input_constructors()
