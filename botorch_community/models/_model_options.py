#!/usr/bin/env python3
r"""Options of :meth:`PFNModel.construct_inputs` (Ax: ``ModelConfig.model_options``).

Parsing and validation only: nothing here needs (or imports) Ax. Networks are looked up
by :func:`botorch_community.pfn.networks.load_network`, so every model built from the
same options shares one network object.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.utils.datasets import MultiTaskDataset, RankingDataset, SupervisedDataset

from botorch_community.pfn.networks import load_network
from botorch_community.pfn.transformer import PFNTransformer

__all__ = ["PFN_MODEL_OPTIONS", "construct_pfn_inputs"]

#: The options `PFNModel.construct_inputs` accepts (Ax: ``ModelConfig.model_options``).
PFN_MODEL_OPTIONS = {
    "network": "'default', a local checkpoint path, or a name registered with "
    "botorch_community.ax.register_network",
    "checkpoint_url": "alias of `network` (a local path; nothing is downloaded)",
    "model": "a PFNTransformer object (outside Ax only: Ax deep-copies options)",
    "cache_context": "keep the encoded context between posterior calls (default True)",
    "input_transform": "a BoTorch InputTransform (Ax passes a Normalize itself)",
    "network_dtype": "'float32' or 'float64': the dtype the network computes in (default: "
    "float64 for Ax's float64 data)",
    "ensemble_size": "average the predictive over this many input symmetries of the prior "
    "(default 1; each member costs one more network pass)",
    "warp_targets": "fit a monotone warp of the targets before the network (default True)",
    "predictive": "'gp' (the GP head's mixture alone; the default for networks with a GP "
    "head) or 'mixture' (the network's output)",
}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# What Ax derives from the search space and passes when it applies.
_SEARCH_SPACE_KWARGS = (
    "categorical_features",
    "fidelity_features",
    "task_feature",
    "hierarchical_dependencies",
)


def parse_network_dtype(dt: Any) -> torch.dtype:
    r"""A dtype from ``"float32"`` / ``"float64"`` (JSON-friendly) or a torch dtype."""
    if isinstance(dt, str):
        if dt not in _DTYPES:
            raise UnsupportedError(
                f"network_dtype must be one of {sorted(_DTYPES)}, got {dt!r}."
            )
        return _DTYPES[dt]
    return dt


def construct_pfn_inputs(
    model_class: type, training_data: SupervisedDataset, **options: Any
) -> dict[str, Any]:
    r"""Implementation of ``PFNModel.construct_inputs`` (see there).

    Args:
        model_class: The model class (for messages), e.g. ``PFNModel``.
        training_data: A single-outcome ``SupervisedDataset``.
        **options: See :data:`PFN_MODEL_OPTIONS`, plus the search-space keywords Ax
            passes (categorical, fidelity and task features, hierarchical dependencies).

    Returns:
        The keyword arguments of ``model_class``.
    """
    name = model_class.__name__
    unknown = sorted(set(options) - set(PFN_MODEL_OPTIONS) - set(_SEARCH_SPACE_KWARGS))
    if unknown:
        accepted = "\n".join(f"  {k}: {v}" for k, v in PFN_MODEL_OPTIONS.items())
        raise UnsupportedError(
            f"{name} got unknown model option(s) {unknown}. It accepts:\n{accepted}\n"
            "A PFN has nothing to fit: GP options (covar_module, likelihood, "
            "outcome_transform, mll options) do not apply."
        )
    if not isinstance(training_data, SupervisedDataset):
        raise TypeError(
            f"{name}.construct_inputs expects a SupervisedDataset, got "
            f"{type(training_data).__name__}."
        )
    if isinstance(training_data, (MultiTaskDataset, RankingDataset)):
        raise UnsupportedError(
            f"{name} does not support {type(training_data).__name__} (multi-task or "
            "preference data); use a GP model for those metrics."
        )
    for key in ("fidelity_features", "task_feature", "hierarchical_dependencies"):
        if options.get(key) not in (None, [], {}):
            raise UnsupportedError(
                f"{name} does not support {key}={options[key]!r}: the PFN models one "
                "continuous single-task, single-fidelity function. Use a GP model "
                "(e.g. MultiTaskGP / SingleTaskMultiFidelityGP) for such search spaces."
            )
    categorical = options.get("categorical_features")
    if categorical:
        warnings.warn(
            f"{name}: features {list(categorical)} are categorical in Ax's search space; "
            "the PFN treats their (normalised) integer codes as continuous inputs.",
            UserWarning,
            stacklevel=3,  # the caller of `construct_inputs`
        )
    Y = training_data.Y
    if Y.shape[-1] != 1:
        raise UnsupportedError(
            f"{name} models a single outcome but the dataset has {Y.shape[-1]} "
            f"({training_data.outcome_names}). Ax builds one model per metric (a "
            "ModelList) when each metric has its own dataset."
        )
    if options.get("network") is not None and options.get("checkpoint_url") is not None:
        raise UnsupportedError(
            "Pass either `network` or `checkpoint_url` (an alias), not both."
        )
    network = options.get("model")
    if network is not None:
        if not isinstance(network, PFNTransformer):
            raise UnsupportedError(
                f"`model` must be a PFNTransformer, got {type(network).__name__}; to "
                "name a checkpoint pass network=<path>."
            )
        if options.get("network") is not None or options.get("checkpoint_url"):
            raise UnsupportedError("Pass either `model` or `network`, not both.")
    else:
        spec = options.get("network") or options.get("checkpoint_url") or "default"
        network = load_network(spec, training_data.X.device, dim=training_data.X.shape[-1])
    inputs: dict[str, Any] = {
        "train_X": training_data.X,
        "train_Y": Y,
        "model": network,
        "cache_context": bool(options.get("cache_context", True)),
    }
    if training_data.Yvar is not None:
        inputs["train_Yvar"] = training_data.Yvar
    if options.get("input_transform") is not None:
        inputs["input_transform"] = options["input_transform"]
    if options.get("network_dtype") is not None:
        inputs["network_dtype"] = parse_network_dtype(options["network_dtype"])
    if options.get("ensemble_size") is not None:
        inputs["ensemble_size"] = options["ensemble_size"]
    for key in ("warp_targets", "predictive"):
        if options.get(key) is not None:
            inputs[key] = options[key]
    return inputs
