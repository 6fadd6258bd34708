#!/usr/bin/env python3
r"""PFN surrogates in Ax's modular BoTorch generator (ax-platform 1.3.x).

Importing :mod:`botorch_community.models.prior_fitted_network` imports this module,
which, when Ax is installed, registers with Ax:

* a fitting routine for :class:`PFNModel` / :class:`MultivariatePFNModel` in Ax's
  ``fit_botorch_model`` dispatcher (what ``Surrogate._construct_model`` calls in Ax
  1.3.1). It does nothing: a PFN has no hyperparameters, so Ax runs no MLL fit.
* a ``submodel_input_constructor`` for PFN models that refuses Ax's model selection
  (several ``ModelConfig`` for one metric) with a clear message: Ax 1.3.1 selects by
  leave-one-out cross-validation that asserts a ``GPyTorchPosterior``.
* the PFN model classes and the discretized acquisition functions in Ax's storage
  registries, so that an experiment and generation strategy naming them round-trips
  through JSON (and SQA). In a fresh process, import this module (or the model module)
  before loading.

Networks are named, not passed: Ax deep-copies ``ModelConfig.model_options`` for every
model it builds, so the options carry a name or path (``network="default"``, a checkpoint
path, or a name given to :func:`register_network`). :func:`load_network` loads each
network once per process; all PFN models of all outcomes and all generation calls share
that one object, and each model keeps its own encoded context (``cache_context=True``,
the default), so Ax's optimizer gets the cached-context speed-up with no caching code.

Example:
    >>> from ax import Client, RangeParameterConfig
    >>> from botorch_community.ax import pfn_generation_strategy
    >>> client = Client()
    >>> client.configure_experiment(parameters=[
    ...     RangeParameterConfig(name="x1", parameter_type="float", bounds=(-5, 10)),
    ...     RangeParameterConfig(name="x2", parameter_type="float", bounds=(0, 15))])
    >>> client.configure_optimization(objective="-branin")
    >>> client.set_generation_strategy(pfn_generation_strategy(num_sobol=8))
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.utils.datasets import MultiTaskDataset, RankingDataset, SupervisedDataset

from botorch_community.pfn.transformer import PFNTransformer

__all__ = [
    "AX_AVAILABLE",
    "PFN_MODEL_OPTIONS",
    "clear_network_cache",
    "construct_pfn_inputs",
    "load_network",
    "pfn_generation_strategy",
    "pfn_model_config",
    "register_network",
    "register_with_ax",
]

#: Whether ax-platform is installed (checked without importing it: importing Ax takes
#: seconds, so the registrations wait until Ax is imported; see `_install_ax_hook`).
AX_AVAILABLE = importlib.util.find_spec("ax") is not None

NetworkSpec = Union[None, str, os.PathLike, PFNTransformer]

# ------------------------------------------------------------------ networks
_LOCK = threading.RLock()
_LOADED: dict[tuple, PFNTransformer] = {}  # (weights file, mtime, size, device) -> net
_REGISTERED: dict[str, PFNTransformer] = {}  # user-given names -> in-memory nets


def register_network(name: str, network: PFNTransformer) -> None:
    r"""Make an in-memory network available to Ax under `name`.

    Ax deep-copies model options, so a network object placed there would be copied
    for every model. Register it instead and pass ``network=name``; every model then
    shares this object. (A JSON-saved experiment stores only the name: register it
    again before loading the experiment in a new process.)
    """
    if not isinstance(network, PFNTransformer):
        raise UnsupportedError(
            f"register_network needs a PFNTransformer, got {type(network).__name__}."
        )
    if not isinstance(name, str) or not name or name == "default":
        raise ValueError("The name must be a non-empty string other than 'default'.")
    with _LOCK:
        _REGISTERED[name] = network


def clear_network_cache() -> None:
    r"""Forget loaded networks (registered ones stay). Models keep their reference."""
    with _LOCK:
        _LOADED.clear()


def load_network(
    network: NetworkSpec = "default",
    device: Union[str, torch.device, None] = None,
) -> PFNTransformer:
    r"""The network named by `network`, loaded at most once per process and device.

    Args:
        network: ``"default"`` or None (the shipped default weights), a name given to
            :func:`register_network`, a local checkpoint path (stem, either file, or a
            directory; see :func:`botorch_community.pfn.checkpoint.checkpoint_paths`),
            or a :class:`PFNTransformer` (returned as is).
        device: Where the network should live (default: CPU).

    Returns:
        The shared, inference-only network. Loading the same file again (by any
        spelling of its path) returns the same object, unless the file changed.
    """
    if isinstance(network, PFNTransformer):
        return network
    if network is not None and not isinstance(network, (str, os.PathLike)):
        raise UnsupportedError(
            "`network` must be 'default', a checkpoint path, a name registered with "
            f"botorch_community.ax.register_network, or a PFNTransformer; got "
            f"{type(network).__name__}."
        )
    device = torch.device("cpu" if device is None else device)
    from botorch_community.pfn.checkpoint import (
        checkpoint_paths,
        DEFAULT_WEIGHTS,
        load_pretrained,
    )

    name = None if network is None else os.fspath(network)
    with _LOCK:
        if name is not None and name in _REGISTERED:
            return _REGISTERED[name]  # as registered (its device is the user's choice)
        if name is not None and "://" in name:
            raise UnsupportedError(
                f"network={name!r} looks like a URL; nothing is downloaded at run "
                "time. Pass a local checkpoint path, a registered name, or 'default'."
            )
        is_default = name in (None, "default")
        stem = DEFAULT_WEIGHTS if is_default else Path(name).expanduser()
        w_path, c_path = checkpoint_paths(stem)
        if not w_path.exists():
            if is_default:
                raise FileNotFoundError(
                    f"The default PFN weights are not installed ({w_path} is missing). "
                    "Reinstall the package, or pass network=<checkpoint path>."
                )
            known = sorted(_REGISTERED)
            raise FileNotFoundError(
                f"network={name!r} is neither a registered network name "
                f"(registered: {known}) nor a checkpoint: {w_path} does not exist."
            )
        stat = w_path.stat()
        key = (str(w_path.resolve()), stat.st_mtime_ns, stat.st_size, str(device))
        net = _LOADED.get(key)
        if net is None:
            net = load_pretrained(None if is_default else stem, device=device)
            net.requires_grad_(False)
            _LOADED[key] = net
        return net


# ------------------------------------------------------------ construct_inputs
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
}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# What Ax derives from the search space and passes when it applies.
_SEARCH_SPACE_KWARGS = (
    "categorical_features",
    "fidelity_features",
    "task_feature",
    "hierarchical_dependencies",
)


def construct_pfn_inputs(
    model_class: type, training_data: SupervisedDataset, **options: Any
) -> dict[str, Any]:
    r"""Implementation of ``PFNModel.construct_inputs`` (see there)."""
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
            stacklevel=3,
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
        network = load_network(spec, training_data.X.device)
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
    dt = options.get("network_dtype")
    if dt is not None:
        if isinstance(dt, str):
            if dt not in _DTYPES:
                raise UnsupportedError(
                    f"network_dtype must be one of {sorted(_DTYPES)}, got {dt!r}."
                )
            dt = _DTYPES[dt]
        inputs["network_dtype"] = dt
    if options.get("ensemble_size") is not None:
        inputs["ensemble_size"] = options["ensemble_size"]
    return inputs


# ---------------------------------------------------------- Ax registrations
_REGISTERED_WITH_AX = False


def _acquisition_classes() -> list[type]:
    try:
        from botorch_community.acquisition import discretized
    except ImportError:  # pragma: no cover - acquisition module not installed
        return []
    names = (
        "DiscretizedExpectedImprovement",
        "DiscretizedLogExpectedImprovement",
        "DiscretizedProbabilityOfImprovement",
        "DiscretizedNoisyExpectedImprovement",
        "DiscretizedUpperConfidenceBound",
    )
    return [getattr(discretized, n) for n in names if hasattr(discretized, n)]


def register_with_ax() -> bool:
    r"""Perform the Ax registrations (idempotent). Returns False if Ax is absent."""
    global _REGISTERED_WITH_AX
    if not AX_AVAILABLE:
        return False
    with _LOCK:
        if _REGISTERED_WITH_AX:
            return True
        from ax.generators.torch.botorch_modular.surrogate import (
            _submodel_input_constructor_base,
            submodel_input_constructor,
        )
        from ax.generators.torch.botorch_modular.utils import fit_botorch_model
        from ax.storage.botorch_modular_registry import (
            register_acquisition_function,
            register_model,
        )

        from botorch_community.models.prior_fitted_network import (
            MultivariatePFNModel,
            PFNModel,
        )

        _remove_ax_hook()

        @fit_botorch_model.register(PFNModel)
        def _fit_pfn_model(
            model: PFNModel,
            mll_class: Any = None,
            mll_options: Optional[dict[str, Any]] = None,
        ) -> None:
            r"""Nothing to fit: the PFN's predictive needs no hyperparameters."""
            model.eval()

        @submodel_input_constructor.register(PFNModel)
        def _submodel_input_constructor_pfn(
            botorch_model_class: type,
            model_config: Any,
            dataset: SupervisedDataset,
            search_space_digest: Any,
            surrogate: Any,
        ) -> dict[str, Any]:
            _refuse_model_selection(botorch_model_class, dataset, surrogate)
            return _submodel_input_constructor_base(
                botorch_model_class=botorch_model_class,
                model_config=model_config,
                dataset=dataset,
                search_space_digest=search_space_digest,
                surrogate=surrogate,
            )

        for cls in (PFNModel, MultivariatePFNModel):
            register_model(cls)
        for cls in _acquisition_classes():
            register_acquisition_function(cls)
        _REGISTERED_WITH_AX = True
    return True


def _refuse_model_selection(
    model_class: type, dataset: SupervisedDataset, surrogate: Any
) -> None:
    r"""Clear error instead of Ax 1.3.1's GPyTorchPosterior assertion in model
    selection (triggered by several ModelConfigs for one metric)."""
    spec = getattr(surrogate, "surrogate_spec", None)
    if spec is None:
        return
    outcome = dataset.outcome_names[0]
    configs = spec.metric_to_model_configs.get(outcome, spec.model_configs)
    if len(configs) > 1 and outcome not in surrogate.metric_to_best_model_config:
        raise UnsupportedError(
            f"{model_class.__name__} is one of {len(configs)} ModelConfigs for metric "
            f"{outcome!r}, which makes Ax 1.3 select a model by cross-validation; "
            "that code path accepts only GPyTorchPosterior models and fails for a PFN. "
            "Give the metric a single ModelConfig (pfn_generation_strategy does). To "
            "compare a PFN with a GP, run ax.adapter.cross_validation.cross_validate "
            "on an adapter of each (it uses predictions and works with PFNs)."
        )


# --------------------------------------------------------- generation strategy
def pfn_model_config(
    model_class: Optional[type] = None,
    network: NetworkSpec = "default",
    cache_context: bool = True,
    name: str = "PFN",
) -> Any:
    r"""An Ax ``ModelConfig`` for a PFN surrogate (one model per metric)."""
    from ax.generators.torch.botorch_modular.utils import ModelConfig

    from botorch_community.models.prior_fitted_network import PFNModel

    if model_class is not None and not (
        isinstance(model_class, type) and issubclass(model_class, PFNModel)
    ):
        raise UnsupportedError(
            f"model_class must be PFNModel or a subclass, got {model_class!r}."
        )
    if isinstance(network, PFNTransformer):
        raise UnsupportedError(
            "Pass the network by name, not as an object: Ax deep-copies model options "
            "(one copy per model) and cannot save an object to JSON. Call "
            "botorch_community.ax.register_network('my-net', net) and pass "
            "network='my-net'."
        )
    if network is not None and not isinstance(network, str):
        network = os.fspath(network)
    return ModelConfig(
        botorch_model_class=model_class or PFNModel,
        model_options={"network": network or "default", "cache_context": cache_context},
        name=name,
    )


_DEFAULT = object()


def pfn_generation_strategy(
    num_sobol: int = 8,
    acquisition: Any = _DEFAULT,
    model_class: Optional[type] = None,
    network: NetworkSpec = "default",
    cache_context: bool = True,
    acquisition_options: Optional[dict[str, Any]] = None,
    optimizer_options: Optional[dict[str, Any]] = None,
    min_trials_observed: Optional[int] = None,
    max_parallelism: Optional[int] = None,
    seed: Optional[int] = None,
    name: Optional[str] = None,
) -> Any:
    r"""A ``GenerationStrategy``: Sobol trials, then Ax's modular BoTorch generator
    with a PFN surrogate (no GP fitting).

    Args:
        num_sobol: Number of quasi-random initial trials (0: start with the PFN).
        acquisition: A BoTorch acquisition class. Default:
            ``DiscretizedLogExpectedImprovement`` (exact under the PFN's bar
            distribution; single objective without outcome constraints). Pass
            ``qLogNoisyExpectedImprovement`` (MC over the PFN posterior) for outcome
            constraints, or None to let Ax choose (qLogNEI / qLogNEHVI).
        model_class: ``PFNModel`` (default) or ``MultivariatePFNModel`` (joint
            posterior over a batch, for MC acquisitions with ``q > 1``).
        network: ``"default"`` (shipped weights), a local checkpoint path, or a name
            given to :func:`register_network`.
        cache_context: Keep each model's encoded context between posterior calls.
        acquisition_options: Keyword arguments for the acquisition's input
            constructor (``botorch_acqf_options``), e.g. ``{"beta": 1.0}``.
        optimizer_options: Options for ``optimize_acqf``, e.g.
            ``{"num_restarts": 8, "raw_samples": 256}`` (Ax's defaults: 20, 1024).
        min_trials_observed: Completed Sobol trials needed before the PFN step
            (default ``ceil(num_sobol / 2)``).
        max_parallelism: Limit on running trials in each step.
        seed: Seed of the Sobol sequence.
        name: Name of the strategy.
    """
    if not AX_AVAILABLE:  # pragma: no cover
        raise ImportError("pfn_generation_strategy needs ax-platform>=1.3.1,<1.4.")
    from ax.adapter.registry import Generators
    from ax.generation_strategy.generation_node import GenerationStep
    from ax.generation_strategy.generation_strategy import GenerationStrategy
    from ax.generators.torch.botorch_modular.surrogate import SurrogateSpec
    from ax.utils.common.constants import Keys

    register_with_ax()
    if acquisition is _DEFAULT:
        from botorch_community.acquisition.discretized import (
            DiscretizedLogExpectedImprovement,
        )

        acquisition = DiscretizedLogExpectedImprovement
    config = pfn_model_config(model_class, network, cache_context)
    generator_kwargs: dict[str, Any] = {
        "surrogate_spec": SurrogateSpec(model_configs=[config]),
    }
    if acquisition is not None:
        generator_kwargs["botorch_acqf_class"] = acquisition
    if acquisition_options:
        generator_kwargs["botorch_acqf_options"] = dict(acquisition_options)
    gen_kwargs = {}
    if optimizer_options:
        gen_kwargs["model_gen_options"] = {
            Keys.OPTIMIZER_KWARGS.value: dict(optimizer_options)
        }
    steps = []
    if num_sobol > 0:
        steps.append(
            GenerationStep(
                generator=Generators.SOBOL,
                num_trials=num_sobol,
                min_trials_observed=(
                    (num_sobol + 1) // 2
                    if min_trials_observed is None
                    else min_trials_observed
                ),
                max_parallelism=max_parallelism,
                generator_kwargs={"seed": seed},
                should_deduplicate=True,
            )
        )
    steps.append(
        GenerationStep(
            generator=Generators.BOTORCH_MODULAR,
            num_trials=-1,
            max_parallelism=max_parallelism,
            generator_kwargs=generator_kwargs,
            generator_gen_kwargs=gen_kwargs,
            should_deduplicate=True,
        )
    )
    acq_name = "auto" if acquisition is None else acquisition.__name__
    default_name = f"Sobol+{config.botorch_model_class.__name__}+{acq_name}"
    return GenerationStrategy(nodes=steps, name=name or default_name)


# ------------------------------------------------------------- lazy registration
class _AxImportHook(importlib.abc.MetaPathFinder):
    r"""Runs :func:`register_with_ax` right after the ``ax`` package is imported.

    Importing Ax takes seconds, and importing our model module should not. So the
    registrations happen at once if Ax is already imported, else just after the first
    ``import ax`` (or of any ``ax.*`` module, which imports the package first).
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "ax":
            return None
        _remove_ax_hook()
        spec = importlib.util.find_spec("ax")  # the real spec, from the other finders
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            loader_exec(module)
            try:
                register_with_ax()
            except Exception as e:  # never break `import ax`
                warnings.warn(
                    f"Registering PFN models with Ax failed ({type(e).__name__}: {e}); "
                    "call botorch_community.ax.register_with_ax() to see the error.",
                    RuntimeWarning,
                    stacklevel=2,
                )

        spec.loader.exec_module = exec_module  # this module's loader instance only
        return spec


_HOOK = _AxImportHook()


def _remove_ax_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def _install_ax_hook() -> None:
    if not AX_AVAILABLE:
        return
    if "ax" in sys.modules:
        register_with_ax()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


_install_ax_hook()
