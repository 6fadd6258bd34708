#!/usr/bin/env python3
r"""PFN surrogates in Ax's modular BoTorch generator (ax-platform 1.3.x).

Nothing in the package imports this module: importing any ``botorch_community`` module
installs an import hook (:mod:`botorch_community._ax_hook`) that imports this module and
calls :func:`register_with_ax` right after Ax itself is imported (at once if it already
is). Importing our models therefore never imports Ax (which takes seconds). The
registrations:

* a fitting routine for :class:`PFNModel` / :class:`MultivariatePFNModel` in Ax's
  ``fit_botorch_model`` dispatcher (what ``Surrogate._construct_model`` calls in Ax
  1.3.1). It does nothing: a PFN has no hyperparameters, so Ax runs no MLL fit.
* a ``submodel_input_constructor`` for PFN models that refuses Ax's model selection
  (several ``ModelConfig`` for one metric) with a clear message: Ax 1.3.1 selects by
  leave-one-out cross-validation that asserts a ``GPyTorchPosterior``.
* the PFN model classes, the discretized acquisition functions and
  :class:`PFNAcquisition` (the default acquisition of :func:`pfn_generation_strategy`,
  chosen from the optimization config: :mod:`botorch_community._ax_acquisition`) in Ax's
  storage registries, so that an experiment and generation strategy naming them round-trips
  through JSON (and SQA). In a fresh process, import any ``botorch_community`` module
  (e.g. this one, or the model module) before loading.

Networks are named, not passed: Ax deep-copies ``ModelConfig.model_options`` for every
model it builds, so the options carry a name or path (``network="default"``, a checkpoint
path, or a name given to :func:`register_network`). :func:`load_network` loads each
network once per process; all PFN models of all outcomes and all generation calls share
that one object, and each model keeps its own encoded context (``cache_context=True``,
the default), so Ax's optimizer gets the cached-context speed-up with no caching code.
(Network lookup lives in :mod:`botorch_community.pfn.networks` and option parsing in
``PFNModel.construct_inputs``, neither needing Ax; their names are re-exported here.)

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

import importlib.util
import os
import threading
from typing import Any, Optional

from botorch.exceptions.errors import UnsupportedError
from botorch.utils.datasets import SupervisedDataset

from botorch_community import _ax_hook
from botorch_community.models._model_options import (  # noqa: F401 (re-exported)
    construct_pfn_inputs,
    PFN_MODEL_OPTIONS,
)
from botorch_community.pfn.networks import (  # noqa: F401 (re-exported)
    clear_network_cache,
    load_network,
    NetworkSpec,
    register_network,
)
from botorch_community.pfn.transformer import PFNTransformer

__all__ = [
    "AX_AVAILABLE",
    "PFN_MODEL_OPTIONS",
    "clear_network_cache",
    "construct_pfn_inputs",
    "load_network",
    "pfn_generation_strategy",
    "pfn_model_config",
    "PFNAcquisition",
    "register_network",
    "register_with_ax",
]

#: Whether ax-platform is installed (checked without importing it).
AX_AVAILABLE = importlib.util.find_spec("ax") is not None

_LOCK = threading.RLock()


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
            register_acquisition,
            register_acquisition_function,
            register_model,
        )

        from botorch_community._ax_acquisition import PFNAcquisition

        from botorch_community.models.prior_fitted_network import (
            MultivariatePFNModel,
            PFNModel,
        )

        _ax_hook.uninstall()

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
        register_acquisition(PFNAcquisition)
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
    # Resolve the network now (loaded once per process and shared with the models), so
    # a typo is reported when the strategy is built, not after the Sobol trials.
    load_network(network or "default")
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
    seed: Optional[int] = None,
    name: Optional[str] = None,
    initialize_with_center: bool = True,
) -> Any:
    r"""Ax's own generation strategy with a PFN surrogate (no GP fitting).

    Built by Ax's dispatch (``choose_generation_strategy`` with
    ``GenerationStrategyDispatchStruct(method="custom")`` and a PFN ``ModelConfig``), so
    it keeps Ax's defaults: a centre point, then Sobol trials, then the modular BoTorch
    generator ("MBM") with Ax's transforms and transition rules. Only the surrogate
    (:func:`pfn_model_config`) and, by default, the acquisition (:class:`PFNAcquisition`)
    are the PFN's. With :class:`PFNAcquisition` each generation's models warm-start the
    GP head's refinement from the previous generation's fit, as the README's BoTorch loop
    does with ``warm_start=``.

    Args:
        num_sobol: Initialization budget: quasi-random trials, the centre point included
            (0: start with the PFN).
        acquisition: A BoTorch acquisition class. Default: :class:`PFNAcquisition`,
            chosen from the optimization config at each generation call: the exact
            ``DiscretizedLogExpectedImprovement`` for one objective without outcome
            constraints (tracked metrics allowed); ``qLogExpectedImprovement`` with the
            constraints; ``qLogExpectedHypervolumeImprovement`` for several objectives;
            ``qLogProbabilityOfFeasibility`` while nothing observed is feasible. None:
            Ax's choice as is (qLogNEI / qLogNEHVI).
        model_class: ``PFNModel`` (default) or ``MultivariatePFNModel`` (joint
            posterior over a batch, for MC acquisitions with ``q > 1``).
        network: ``"default"`` (shipped weights), a local checkpoint path, or a name
            given to :func:`register_network`. Checked now.
        cache_context: Keep each model's encoded context between posterior calls.
        acquisition_options: Keyword arguments for the acquisition's input
            constructor (``botorch_acqf_options``), e.g. ``{"beta": 1.0}``.
        optimizer_options: Options for ``optimize_acqf``, e.g.
            ``{"num_restarts": 8, "raw_samples": 256}`` (Ax's defaults: 20, 1024).
        min_trials_observed: Completed initialization trials needed before the PFN
            step (Ax's default: half the budget).
        seed: Seed of the Sobol sequence.
        name: Name of the strategy.
        initialize_with_center: Start with the centre of the search space (Ax's
            default).
    """
    if not AX_AVAILABLE:  # pragma: no cover
        raise ImportError("pfn_generation_strategy needs ax-platform>=1.3.1,<1.4.")
    from ax.adapter.registry import Generators
    from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
    from ax.api.utils.structs import GenerationStrategyDispatchStruct
    from ax.utils.common.constants import Keys

    register_with_ax()
    if acquisition is not None and acquisition is not _DEFAULT:
        from botorch.acquisition import AcquisitionFunction

        if not (isinstance(acquisition, type) and issubclass(acquisition, AcquisitionFunction)):
            raise UnsupportedError(
                "`acquisition` must be a BoTorch AcquisitionFunction class (e.g. "
                "DiscretizedLogExpectedImprovement or qLogNoisyExpectedImprovement), "
                f"None, or left out; got {acquisition!r}."
            )
    if not isinstance(num_sobol, int) or num_sobol < 0:
        raise ValueError(f"num_sobol must be a non-negative integer, got {num_sobol!r}.")
    config = pfn_model_config(model_class, network, cache_context)
    struct = GenerationStrategyDispatchStruct(
        method="custom",
        initialization_budget=num_sobol,
        initialization_random_seed=seed,
        initialize_with_center=initialize_with_center and num_sobol > 0,
        min_observed_initialization_trials=min_trials_observed,
    )
    explicit = None if acquisition in (None, _DEFAULT) else acquisition
    gs = choose_generation_strategy(struct, model_config=config, botorch_acqf_class=explicit)
    for node in gs._nodes:
        for spec in node.generator_specs:
            if spec.generator_enum != Generators.BOTORCH_MODULAR:
                continue
            if acquisition is _DEFAULT:
                from botorch_community._ax_acquisition import PFNAcquisition

                spec.generator_kwargs["acquisition_class"] = PFNAcquisition
            if acquisition_options:
                spec.generator_kwargs["botorch_acqf_options"] = dict(acquisition_options)
            if optimizer_options:
                spec.generator_gen_kwargs = {
                    **(spec.generator_gen_kwargs or {}),
                    "model_gen_options": {
                        Keys.OPTIMIZER_KWARGS.value: dict(optimizer_options)
                    },
                }
    acq_name = {None: "auto", _DEFAULT: "PFNAcquisition"}.get(acquisition) or acquisition.__name__
    gs._name = name or f"{gs.name}+{config.botorch_model_class.__name__}+{acq_name}"
    return gs

def __getattr__(name: str) -> Any:
    # `PFNAcquisition` subclasses Ax's Acquisition: imported on first use (needs Ax).
    if name == "PFNAcquisition":
        from botorch_community._ax_acquisition import PFNAcquisition

        return PFNAcquisition
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
