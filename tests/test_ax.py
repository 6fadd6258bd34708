#!/usr/bin/env python3
r"""PFN surrogates in Ax 1.3 (modular BoTorch generator): no GP fit, user units, shared
networks, one context encoding per model per generation call, JSON round trip."""

import logging
import math
import statistics
import warnings

import pytest
import torch

pytest.importorskip("ax", reason="ax-platform is not installed")

from ax import Client, RangeParameterConfig  # noqa: E402
from ax.adapter.registry import Generators  # noqa: E402
from ax.generation_strategy.generation_node import GenerationStep  # noqa: E402
from ax.generation_strategy.generation_strategy import (  # noqa: E402
    GenerationStrategy,
)
from ax.generators.torch.botorch_modular.surrogate import SurrogateSpec  # noqa: E402
from ax.generators.torch.botorch_modular.utils import (  # noqa: E402
    fit_botorch_model,
    ModelConfig,
)
from ax.storage.botorch_modular_registry import (  # noqa: E402
    CLASS_TO_REVERSE_REGISTRY,
)
from botorch.acquisition.acquisition import AcquisitionFunction  # noqa: E402
from botorch.acquisition.logei import qLogNoisyExpectedImprovement  # noqa: E402
from botorch.exceptions.errors import UnsupportedError  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.model import Model, ModelList  # noqa: E402
from botorch.models.transforms.input import Normalize  # noqa: E402
from botorch.utils.datasets import SupervisedDataset  # noqa: E402

import botorch_community.ax as bax  # noqa: E402
from botorch_community.acquisition.discretized import (  # noqa: E402
    DiscretizedExpectedImprovement,
    DiscretizedLogExpectedImprovement,
)
from botorch_community.models.prior_fitted_network import (  # noqa: E402
    MultivariatePFNModel,
    PFNModel,
)
from botorch_community.pfn.checkpoint import DEFAULT_WEIGHTS  # noqa: E402
from botorch_community.pfn.checkpoint import save_pretrained  # noqa: E402
from botorch_community.pfn.testing import random_pfn  # noqa: E402

SMALL_OPT = {"num_restarts": 4, "raw_samples": 64}
BOUNDS = {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}


@pytest.fixture(autouse=True)
def _quiet_ax():
    logger = logging.getLogger("ax")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def net():
    # A tiny random network: these tests are about the plumbing, not BO quality.
    network = random_pfn(num_features=4, emsize=32, nlayers=2, nhead=2, nhid=64)
    bax.register_network("test-pfn", network)
    return network


def branin(p):
    x1, x2 = p["x1"], p["x2"]
    return (
        (x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
        + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1)
        + 10
    )


def bowl(p):  # smooth, no outliers: Ax's winsorization leaves it alone
    return (p["x1"] - 1.0) ** 2 / 10 + (p["x2"] - 4.0) ** 2 / 10 + 3.0


def make_client(gs, objective="-f", constraints=None, seed=0):
    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name=n, parameter_type="float", bounds=b)
            for n, b in BOUNDS.items()
        ]
    )
    client.configure_optimization(objective=objective, outcome_constraints=constraints)
    client.set_generation_strategy(gs)
    return client


def run(client, n, metrics):
    for _ in range(n):
        for idx, p in client.get_next_trials(max_trials=1).items():
            client.complete_trial(idx, raw_data={k: f(p) for k, f in metrics.items()})


def surrogate_model(client) -> Model:
    return client._generation_strategy.adapter.generator.surrogate.model


def pfn_models(client) -> list:
    model = surrogate_model(client)
    return list(model.models) if isinstance(model, ModelList) else [model]


@pytest.fixture(scope="module")
def no_gp_fit():
    r"""Make any MLL fit inside Ax fail loudly."""
    import ax.generators.torch.botorch_modular.utils as ax_utils

    def fail(*args, **kwargs):
        raise AssertionError("Ax ran an MLL fit on a PFN model")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ax_utils, "fit_gpytorch_mll", fail)
        yield


class Counter:
    r"""Counts `encode_context` calls on a network and `PFNModel.posterior` calls."""

    def __init__(self, monkeypatch, network):
        self.encode = self.posterior = 0
        posterior = PFNModel.posterior
        # Ax's data are float64: the models compute with the network's float64 copy.
        for target in (network, network.cast_copy(torch.float64)):
            encode = target.encode_context

            def counting_encode(*args, _encode=encode, **kwargs):
                self.encode += 1
                return _encode(*args, **kwargs)

            monkeypatch.setattr(target, "encode_context", counting_encode, raising=False)

        def counting_posterior(model, *args, **kwargs):
            self.posterior += 1
            return posterior(model, *args, **kwargs)

        monkeypatch.setattr(PFNModel, "posterior", counting_posterior)


# ------------------------------------ (1) the recipe: Client + pfn_generation_strategy
@pytest.fixture(scope="module")
def client(net, no_gp_fit):
    gs = bax.pfn_generation_strategy(  # default acquisition: discretized LogEI
        num_sobol=4, network="test-pfn", optimizer_options=SMALL_OPT, seed=0
    )
    client = make_client(gs)
    run(client, 5, {"f": bowl})  # 4 Sobol + 1 PFN trial
    return client


def test_client_recipe(client, net):
    nodes = [t.generator_runs[0]._generation_node_name for t in trials_of(client)]
    # Ax's own dispatch: the centre point and Sobol trials (budget 4), then the PFN
    assert nodes == ["CenterOfSearchSpace"] + ["Sobol"] * 3 + ["MBM"]
    (model,) = pfn_models(client)
    assert type(model) is PFNModel and model.pfn is net
    acqf = client._generation_strategy.adapter.generator._acquisition.acqf
    assert isinstance(acqf, DiscretizedLogExpectedImprovement)
    assert not acqf.maximize  # "-f": Ax's weight -1 became minimisation
    # Ax's fitting entry point resolves to our no-op (the fixture forbids MLL fits).
    fit_botorch_model(model, mll_class=None, mll_options=None)


def trials_of(client):
    return sorted(client._experiment.trials.values(), key=lambda t: t.index)


# ----------------------------------------------------- (2) predictions in user units
def test_predictions_in_user_units(client, net):
    (model,) = pfn_models(client)
    # Ax feeds the model X in parameter units (with a Normalize to the search-space
    # bounds) and standardised Y.
    X = model.train_X
    arms = torch.tensor(
        [[t.arm.parameters["x1"], t.arm.parameters["x2"]] for t in trials_of(client)],
        dtype=torch.float64,
    )
    assert torch.equal(X, arms[: X.shape[0]])
    assert isinstance(model.input_transform, Normalize)
    Y = torch.tensor([[bowl({"x1": a, "x2": b})] for a, b in X.tolist()], dtype=X.dtype)
    fed = model.train_Y.squeeze(-1)
    assert fed.std() == pytest.approx(1.0, abs=1e-6)  # standardised, not winsorized
    assert torch.corrcoef(torch.stack([fed, Y.squeeze(-1)]))[0, 1] > 1 - 1e-9

    bounds = torch.tensor(list(BOUNDS.values()), dtype=torch.float64).T
    direct = PFNModel(X, Y, model=net, input_transform=Normalize(2, bounds=bounds))
    points = [{"x1": -2.0, "x2": 7.5}, {"x1": 4.0, "x2": 1.0}, {"x1": 9.0, "x2": 14.0}]
    Xp = torch.tensor([[p["x1"], p["x2"]] for p in points], dtype=torch.float64)
    with torch.no_grad():
        post = direct.posterior(Xp)
    ax_pred = client.predict(points)
    mean = torch.tensor([p["f"][0] for p in ax_pred], dtype=torch.float64)
    sem = torch.tensor([p["f"][1] for p in ax_pred], dtype=torch.float64)
    scale = Y.std()
    torch.testing.assert_close(mean, post.mean.squeeze(-1), atol=1e-4 * scale, rtol=0)
    torch.testing.assert_close(
        sem, post.variance.squeeze(-1).sqrt(), atol=1e-4 * scale, rtol=1e-4
    )
    assert mean.min() > 0  # user units (bowl >= 3), not standardised


# ------------------------------------------------ (4) encodings per generation call
def test_one_encoding_per_generation_call(client, net, monkeypatch):
    count = Counter(monkeypatch, net)
    run(client, 1, {"f": bowl})  # one generation call on new data
    (model,) = pfn_models(client)
    assert count.posterior > 10  # raw samples, restarts, L-BFGS steps, predictions
    assert count.encode == 1 and model.num_encodings == 1


def test_pending_trial_reaches_the_joint_acquisition(client, net, monkeypatch):
    from botorch_community._ax_acquisition import PFNBatchLogExpectedImprovement

    count = Counter(monkeypatch, net)
    client.get_next_trials(max_trials=1)  # left running: pending at the next call
    acqf = client._generation_strategy.adapter.generator._acquisition.acqf
    assert type(acqf).__name__ == "DiscretizedLogExpectedImprovement"  # nothing pending
    count.encode = 0
    client.get_next_trials(max_trials=1)
    acqf = client._generation_strategy.adapter.generator._acquisition.acqf
    # with a pending trial: qLogEI of the candidate jointly with the pending point
    assert isinstance(acqf, PFNBatchLogExpectedImprovement)
    assert acqf.X_pending is not None and acqf.X_pending.shape[0] == 1
    # at most one encode of the observed context (none when the model kept last
    # generation's): the pending point is in the joint samples, not in the context
    assert count.encode <= 1
    for idx, trial in client._experiment.trials.items():
        if not trial.status.is_terminal:
            client.complete_trial(idx, raw_data={"f": bowl(trial.arm.parameters)})


# ----------------------------------------------------------- (5) JSON round trip
def test_json_round_trip(client, net, tmp_path):
    path = tmp_path / "snapshot.json"
    client.save_to_json_file(str(path))
    text = path.read_text()
    assert '"PFNModel"' in text and '"PFNAcquisition"' in text

    loaded = Client.load_from_json_file(str(path))
    assert len(loaded._experiment.trials) == len(client._experiment.trials)
    node = loaded._generation_strategy.nodes_by_name["MBM"]
    kwargs = node.generator_specs[0].generator_kwargs
    (config,) = kwargs["surrogate_spec"].model_configs
    assert config.botorch_model_class is PFNModel
    assert config.model_options == {"network": "test-pfn", "cache_context": True}
    assert kwargs["acquisition_class"] is bax.PFNAcquisition
    run(loaded, 1, {"f": bowl})  # and it keeps optimising with the PFN
    (model,) = pfn_models(loaded)
    assert type(model) is PFNModel and model.pfn is net
    acqf = loaded._generation_strategy.adapter.generator._acquisition.acqf
    assert isinstance(acqf, DiscretizedLogExpectedImprovement)


def test_registries():
    assert CLASS_TO_REVERSE_REGISTRY[Model]["PFNModel"] is PFNModel
    assert CLASS_TO_REVERSE_REGISTRY[Model]["MultivariatePFNModel"] is (
        MultivariatePFNModel
    )
    assert CLASS_TO_REVERSE_REGISTRY[AcquisitionFunction][
        "DiscretizedExpectedImprovement"
    ] is DiscretizedExpectedImprovement
    assert fit_botorch_model.dispatch(MultivariatePFNModel) is (
        fit_botorch_model.dispatch(PFNModel)
    )


# ---- (1b, 3, 4) hand-built GenerationStrategy, objective + constraint, shared network
@pytest.fixture(scope="module")
def constrained_client(tmp_path_factory, no_gp_fit):
    path = tmp_path_factory.mktemp("pfn") / "net"
    save_pretrained(random_pfn(num_features=4, emsize=32, nlayers=2, seed=5), path)
    config = ModelConfig(
        botorch_model_class=PFNModel, model_options={"network": str(path)}
    )
    gs = GenerationStrategy(
        nodes=[
            GenerationStep(
                generator=Generators.SOBOL, num_trials=4, generator_kwargs={"seed": 1}
            ),
            GenerationStep(
                generator=Generators.BOTORCH_MODULAR,
                num_trials=-1,
                generator_kwargs={
                    "surrogate_spec": SurrogateSpec(model_configs=[config]),
                    "botorch_acqf_class": qLogNoisyExpectedImprovement,
                },
                generator_gen_kwargs={
                    "model_gen_options": {"optimizer_kwargs": SMALL_OPT}
                },
            ),
        ]
    )
    client = make_client(gs, constraints=["c <= 12.0"])
    run(client, 4, CONSTRAINED)
    return client, path


CONSTRAINED = {"f": bowl, "c": lambda p: p["x1"] + p["x2"]}


@pytest.mark.filterwarnings("ignore:When all training points are infeasible")
def test_objective_and_constraint_share_one_network(constrained_client, monkeypatch):
    client, path = constrained_client
    shared = bax.load_network(path)  # memoised: the object the models use
    count = Counter(monkeypatch, shared)
    run(client, 1, CONSTRAINED)  # one generation call
    model = surrogate_model(client)
    assert isinstance(model, ModelList) and len(model.models) == 2
    a, b = model.models
    assert type(a) is PFNModel and type(b) is PFNModel
    assert a.pfn is b.pfn is shared
    assert bax.load_network(f"{path}.safetensors") is shared
    assert a.kv_cache is not None and b.kv_cache is not None
    assert a.kv_cache is not b.kv_cache  # each outcome its own context
    assert not torch.equal(a.train_Y, b.train_Y)
    # (4) one encoding per model for the whole generation call
    assert count.posterior > 20
    assert count.encode == 2 and [m.num_encodings for m in model.models] == [1, 1]
    acqf = client._generation_strategy.adapter.generator._acquisition.acqf
    assert isinstance(acqf, qLogNoisyExpectedImprovement)


# ----------------------------------------------------------- clear errors
def _dataset(m=1):
    X = torch.rand(5, 2, dtype=torch.float64)
    return SupervisedDataset(
        X, X[:, :m].sin(), feature_names=["a", "b"],
        outcome_names=[f"y{i}" for i in range(m)],
    )


def test_construct_inputs(net):
    ds = _dataset()
    inputs = PFNModel.construct_inputs(ds, network="test-pfn", cache_context=False)
    assert inputs["model"] is net and inputs["cache_context"] is False
    model = PFNModel(**inputs)
    assert model.pfn is net and model.network_dtype == torch.float64  # Ax data: float64
    inputs = PFNModel.construct_inputs(ds, network="test-pfn", network_dtype="float32")
    assert PFNModel(**inputs).network_dtype == torch.float32  # a JSON-friendly string
    with pytest.raises(UnsupportedError, match="network_dtype must be one of"):
        PFNModel.construct_inputs(ds, network="test-pfn", network_dtype="half")
    inputs = PFNModel.construct_inputs(ds, network="test-pfn", ensemble_size=4)
    assert PFNModel(**inputs).ensemble_size == 4
    with pytest.raises(UnsupportedError, match=r"unknown model option\(s\) \['nu'\]"):
        PFNModel.construct_inputs(ds, network="test-pfn", nu=2.5)
    with pytest.raises(UnsupportedError, match="not both"):
        PFNModel.construct_inputs(ds, network="test-pfn", checkpoint_url="x")
    # Ax's default network option follows the search space's dimension: more than 18
    # parameters get the shipped high-dimensional network
    X30 = torch.rand(6, 30, dtype=torch.float64)
    ds30 = SupervisedDataset(X30, X30[:, :1], feature_names=[f"x{i}" for i in range(30)],
                             outcome_names=["y"])  # fmt: skip
    assert PFNModel.construct_inputs(ds30)["model"].config.tokens == "cells"
    assert PFNModel.construct_inputs(ds)["model"].config.tokens == "rows"
    with pytest.raises(UnsupportedError, match="single outcome"):
        PFNModel.construct_inputs(_dataset(2), network="test-pfn")
    with pytest.raises(UnsupportedError, match="task_feature"):
        PFNModel.construct_inputs(ds, network="test-pfn", task_feature=1)
    with pytest.raises(UnsupportedError, match="URL"):
        PFNModel.construct_inputs(ds, network="https://example.com/net")
    with pytest.raises(FileNotFoundError, match="registered network name"):
        PFNModel.construct_inputs(ds, network="no-such-net")
    with pytest.warns(UserWarning, match="categorical"):
        PFNModel.construct_inputs(ds, network="test-pfn", categorical_features=[1])
    with pytest.raises(UnsupportedError, match="register_network"):
        bax.pfn_model_config(network=net)


def test_model_selection_gives_clear_error(net):
    configs = [
        bax.pfn_model_config(network="test-pfn"),
        ModelConfig(botorch_model_class=SingleTaskGP, name="GP"),
    ]
    gs = GenerationStrategy(
        nodes=[
            GenerationStep(generator=Generators.SOBOL, num_trials=3),
            GenerationStep(
                generator=Generators.BOTORCH_MODULAR,
                num_trials=-1,
                generator_kwargs={
                    "surrogate_spec": SurrogateSpec(model_configs=configs)
                },
            ),
        ]
    )
    client = make_client(gs)
    run(client, 3, {"f": bowl})
    with pytest.raises(UnsupportedError, match="single ModelConfig"):
        client.get_next_trials(max_trials=1)


# ------------------------------------------- import behaviour (fresh interpreters)
def _has_default_weights_early():
    return DEFAULT_WEIGHTS.with_name("default.safetensors").exists()


LAZY = """
import sys
import botorch_community.models.prior_fitted_network as m
import botorch_community.acquisition.discretized
assert "ax" not in sys.modules, "importing the model must not import Ax"
assert "botorch_community.ax" not in sys.modules, "nothing imports botorch_community.ax"
import ax  # the registrations run right after Ax's package import
from ax.storage.botorch_modular_registry import CLASS_TO_REVERSE_REGISTRY as R
from botorch.models.model import Model
from botorch.acquisition.acquisition import AcquisitionFunction
assert R[Model]["PFNModel"] is m.PFNModel
assert "DiscretizedLogExpectedImprovement" in R[AcquisitionFunction]
"""
WITHOUT_AX = """
import sys
sys.modules["ax"] = None  # as if ax-platform were not installed
import torch
from botorch.utils.datasets import SupervisedDataset
from botorch_community.models.prior_fitted_network import PFNModel
from botorch_community import ax as bax
from botorch_community.pfn.testing import random_pfn
assert not bax.AX_AVAILABLE and not bax.register_with_ax()
X = torch.rand(4, 2)
ds = SupervisedDataset(X, X[:, :1], feature_names=["a", "b"], outcome_names=["y"])
PFNModel(**PFNModel.construct_inputs(ds, model=random_pfn(num_features=2)))
"""


LOAD_FRESH = """
import sys, logging
import botorch_community  # the only import a user adds to load a PFN experiment
from ax import Client
client = Client.load_from_json_file(sys.argv[1])
for idx, p in client.get_next_trials(max_trials=1).items():
    client.complete_trial(idx, raw_data={"f": (p["x1"] - 1.0) ** 2 / 10 + (p["x2"] - 4.0) ** 2 / 10 + 3.0})
node = client._generation_strategy._curr.name
acqf = client._generation_strategy.adapter.generator._acquisition.acqf
assert node == "MBM", node
assert type(acqf).__name__ == "DiscretizedLogExpectedImprovement", type(acqf)
"""


@pytest.mark.skipif(not _has_default_weights_early(), reason="default weights not shipped")
def test_save_in_one_process_load_and_continue_in_another(tmp_path, no_gp_fit):
    import os
    import subprocess
    import sys

    client = make_client(bax.pfn_generation_strategy(num_sobol=4, optimizer_options=SMALL_OPT))
    run(client, 5, {"f": bowl})  # through the first PFN trial
    path = tmp_path / "experiment.json"
    client.save_to_json_file(str(path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", LOAD_FRESH, str(path)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("script", [LAZY, WITHOUT_AX], ids=["lazy", "without_ax"])
def test_import_behaviour(script):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]


# -------------------------------------------- (6) end to end, shipped default network
def _has_default_weights():
    return DEFAULT_WEIGHTS.with_name("default.safetensors").exists()


@pytest.mark.skipif(
    not _has_default_weights(),
    reason="the shipped default network (pfn/weights/default.safetensors) is not "
    "installed yet",
)
def test_branin_end_to_end_default_network():
    best_sobol, best_guided = [], []
    for seed in range(4):  # 8 Sobol + 6 PFN trials each
        gs = bax.pfn_generation_strategy(num_sobol=8, optimizer_options=SMALL_OPT, seed=seed)
        client = make_client(gs, objective="-branin")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(client, 14, {"branin": branin})
        # Ax's float64 data: the network computes in float64, so L-BFGS-B's line searches
        # do not fail on float32 round-off (no BoTorch retries from new initial conditions).
        failed = [str(w.message)[:200] for w in caught if "Optimization failed" in str(w.message)]
        assert not failed, failed
        values = [
            branin(t.arm.parameters)
            for t in sorted(client._experiment.trials.values(), key=lambda t: t.index)
        ]
        (model,) = pfn_models(client)
        assert model.pfn is bax.load_network("default")
        # the GP head's predictive: float64 GP algebra on the float32 network's particles
        assert model.network_dtype == torch.float32 and model.predictive == "gp"
        sobol, guided = values[:8], values[8:]
        # In every seed the PFN-guided trials concentrate in good regions.
        assert statistics.median(guided) < statistics.median(sobol), (seed, values)
        best_sobol.append(min(sobol))
        best_guided.append(min(guided))
    # They find better points than the Sobol trials alone: on average over the seeds the
    # best guided trial is better than the best Sobol trial (measured 3.31 vs 6.52; per
    # seed in 3 of these 4 seeds; seed 0's Sobol points already reach 3.55, optimum 0.398).
    assert statistics.mean(best_guided) < statistics.mean(best_sobol), (best_guided, best_sobol)
    assert sum(g < s for g, s in zip(best_guided, best_sobol)) >= 2, (best_guided, best_sobol)


# ------------------- (6) Ax round two: the default acquisition follows the optimization
def _default_gs(network="test-pfn", num_sobol=4):
    return bax.pfn_generation_strategy(
        num_sobol=num_sobol, network=network, optimizer_options=SMALL_OPT, seed=0
    )


def _acqf(client):
    return client._generation_strategy.adapter.generator._acquisition.acqf


def test_tracked_metric_keeps_discretized_logei(net, no_gp_fit):
    client = make_client(_default_gs())
    run(client, 5, {"f": bowl, "c": lambda p: p["x1"] * p["x2"]})  # c only tracked
    acqf = _acqf(client)
    assert isinstance(acqf, DiscretizedLogExpectedImprovement)
    # the incumbent is the objective's best observation (minimised: its min) in the
    # model's (Ax-standardised) units, taken from the objective's own model
    fs = torch.tensor([bowl(t.arm.parameters) for t in trials_of(client)[:-1]])
    Y = acqf.model.train_Y.squeeze(-1)
    assert Y.argmin() == fs.argmin() and not acqf.maximize
    assert math.isclose(acqf.best_f.item(), Y.min().item(), rel_tol=1e-9)


@pytest.mark.filterwarnings("ignore:When all training points are infeasible")
def test_constraint_and_two_objectives_use_plug_in_mc_acquisitions(net, no_gp_fit):
    r"""Ax chooses qLogNEI (constraints) / qLogNEHVI (two objectives); with a PFN the
    plug-in variants qLogEI / qLogEHVI replace them (the marginal predictive at the
    observations is fixed within a generation), tracked metrics included."""
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.acquisition.multi_objective.logei import (
        qLogExpectedHypervolumeImprovement,
    )

    tracked = {"t": lambda p: p["x1"] * p["x2"]}
    client = make_client(_default_gs(), constraints=["c <= 12.0"])
    run(client, 6, {**CONSTRAINED, **tracked})
    acqf = _acqf(client)
    assert isinstance(acqf, qLogExpectedImprovement) and acqf._constraints
    # incumbent: the best feasible posterior mean at the observations (minimising f)
    acq = client._generation_strategy.adapter.generator._acquisition
    with torch.no_grad():
        mean = acq._model.posterior(acq.X_observed).mean  # n x 2 (f, c; t dropped)
    A, b = acq._outcome_constraints
    feasible = (mean @ A.transpose(-1, -2) <= b.transpose(-1, -2)).all(dim=-1)
    assert feasible.any()
    best = (mean @ acq._objective_weights.reshape(-1).to(mean))[feasible].max()
    assert math.isclose(acqf.best_f.item(), best.item(), rel_tol=1e-6)

    client = make_client(_default_gs(), objective="-f, -g")
    run(client, 5, {"f": bowl, "g": lambda p: (p["x1"] - 5.0) ** 2 + p["x2"], **tracked})
    assert isinstance(_acqf(client), qLogExpectedHypervolumeImprovement)


def test_plug_in_acquisitions_condition_on_the_means_at_the_observations(no_gp_fit, monkeypatch):
    r"""While a plug-in MC acquisition is optimised, the PFN models condition on their
    means at the observations (no improvement left on an observed point, so no
    duplicates); afterwards the surrogate's predictions are the plain ones again."""
    from botorch_community import _ax_acquisition

    seen = []
    original = _ax_acquisition.Acquisition.optimize

    def recording(self, *args, **kwargs):
        models = _ax_acquisition._pfn_models(self.surrogate)
        seen.append([m.observations_at_means for m in models])
        X = self.X_observed
        for m in models:
            with torch.no_grad():
                sd = m.posterior(X.unsqueeze(-2)).variance.sqrt().reshape(-1)
            assert float(sd.max()) <= 1e-2 * float(m.train_Y.std())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_ax_acquisition.Acquisition, "optimize", recording)
    client = make_client(_default_gs(network="default"), objective="-f, -g")  # noise hints
    run(client, 6, {"f": bowl, "g": lambda p: (p["x1"] - 5.0) ** 2 + p["x2"]})
    assert seen and all(flags and all(flags) for flags in seen)
    surrogate = client._generation_strategy.adapter.generator.surrogate
    assert not any(m.observations_at_means for m in _ax_acquisition._pfn_models(surrogate))


def test_network_typo_reported_when_the_strategy_is_built():
    with pytest.raises(FileNotFoundError, match="no-such-net"):
        bax.pfn_generation_strategy(network="no-such-net")
    with pytest.raises(UnsupportedError, match="AcquisitionFunction class"):
        bax.pfn_generation_strategy(acquisition="qLogNEI")


@pytest.mark.skipif(not _has_default_weights(), reason="default weights not shipped")
def test_batch_of_four_is_spread_shipped_network(no_gp_fit):
    r"""q = 4 with the default acquisition: Ax optimises the batch sequentially with
    the earlier points pending; the PFN's joint posterior couples a candidate with them
    (:class:`PFNBatchLogExpectedImprovement`), so the batch is four distinct points, not
    copies of one."""
    client = make_client(_default_gs(network="default", num_sobol=6))
    run(client, 7, {"f": bowl})  # (Ax gives one trial at the step from Sobol to BoTorch)
    batch = client.get_next_trials(max_trials=4)
    X = torch.tensor([[p["x1"], p["x2"]] for p in batch.values()], dtype=torch.float64)
    X = X / torch.tensor([15.0, 15.0], dtype=torch.float64)  # the unit cube's scale
    dist = torch.cdist(X, X) + 10 * torch.eye(len(X), dtype=torch.float64)
    assert len(batch) == 4 and dist.min() > 0.02


@pytest.mark.skipif(not _has_default_weights(), reason="default weights not shipped")
def test_mixed_parameters_and_noisy_observations_with_sems(no_gp_fit):
    r"""Integer and unordered choice parameters (Ax relaxes and one-hot encodes them)
    and observations reported with a standard error: PFN trials are valid points."""
    from ax import ChoiceParameterConfig

    client = Client(random_seed=0)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name="x1", parameter_type="float", bounds=(-5.0, 10.0)),
        RangeParameterConfig(name="k", parameter_type="int", bounds=(0, 10)),
        ChoiceParameterConfig(name="c", parameter_type="str", values=["a", "b", "c"],
                              is_ordered=False),
    ])  # fmt: skip
    client.configure_optimization(objective="-f")
    client.set_generation_strategy(_default_gs(network="default", num_sobol=5))
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx, p in client.get_next_trials(max_trials=1).items():
            f = (p["x1"] - 1) ** 2 / 10 + (p["k"] - 3) ** 2 / 5 + "abc".index(p["c"])
            noise = 0.1 * torch.randn((), generator=gen).item()
            client.complete_trial(idx, raw_data={"f": (f + noise, 0.1)})  # (mean, SEM)
    trials = trials_of(client)
    assert len(trials) == 8
    assert [t.generator_runs[0]._generation_node_name for t in trials][-1]== "MBM"
    for t in trials:
        p = t.arm.parameters
        assert isinstance(p["k"], int) and 0 <= p["k"] <= 10 and p["c"] in ("a", "b", "c")
    model = pfn_models(client)[0]
    assert model.train_Yvar is not None  # the SEMs reach the PFN as known noise
    assert isinstance(_acqf(client), DiscretizedLogExpectedImprovement)


def test_generations_warm_start_the_gp_particles(no_gp_fit):
    r"""Ax refits the same surrogate each generation with a new model: the PFN models of
    a generation start their GP refinement from the particles the previous generation's
    models fitted (the README loop's warm start), which the acquisition keeps on the
    surrogate."""
    network = random_pfn(num_features=4, emsize=32, nlayers=2, nhead=2, nhid=64,
                         gp_head=True, gp_particles=2, gp_refine_steps=4,
                         gp_refine_min_context=3, gp_refine_warm_steps=2)  # fmt: skip
    bax.register_network("test-gp-pfn", network)
    gs = bax.pfn_generation_strategy(num_sobol=4, network="test-gp-pfn",
                                     optimizer_options=SMALL_OPT, seed=0)  # fmt: skip
    client = make_client(gs)
    run(client, 5, {"f": bowl})  # 4 Sobol + the first PFN generation: nothing to start from
    surrogate = client._generation_strategy.adapter.generator.surrogate
    (first,) = pfn_models(client)
    assert first._gp_init is None
    kept = surrogate._pfn_fitted_particles
    assert len(kept) == 1 and torch.equal(kept[0], first.fitted_particles)
    (kept_logits,) = surrogate._pfn_fitted_prior_logits  # and their weight logits
    assert torch.equal(kept_logits.logits, first.fitted_prior_logits.logits)
    run(client, 1, {"f": bowl})  # the second PFN generation
    assert client._generation_strategy.adapter.generator.surrogate is surrogate
    (second,) = pfn_models(client)
    assert second is not first and torch.equal(second._gp_init, kept[0])
    assert torch.equal(second._gp_init_logits.logits, kept_logits.logits)
    assert not torch.equal(surrogate._pfn_fitted_particles[0], kept[0])  # refit, kept anew


@pytest.mark.skipif(not _has_default_weights(), reason="default weights not shipped")
def test_batch_logei_is_exact_without_pending_and_joint_with_pending():
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler
    from botorch_community._ax_acquisition import PFNBatchLogExpectedImprovement

    g = torch.Generator().manual_seed(0)
    X = torch.rand(15, 2, generator=g, dtype=torch.float64)
    Y = -((X - 0.4) ** 2).sum(-1, keepdim=True) * 10
    model = PFNModel(X, Y)
    Xc = torch.rand(5, 1, 2, generator=g, dtype=torch.float64)
    acqf = PFNBatchLogExpectedImprovement(model, best_f=Y.max())
    assert acqf.tau_max == pytest.approx(1e-6 * float(Y.std()))
    exact = DiscretizedLogExpectedImprovement(model, best_f=Y.max())
    torch.testing.assert_close(acqf(Xc), exact(Xc))  # nothing pending: the exact LogEI
    pending = X[Y.argmax()].unsqueeze(0) + 0.01
    sampler = SobolQMCNormalSampler(torch.Size([256]), seed=0)
    acqf = PFNBatchLogExpectedImprovement(model, best_f=Y.max(), sampler=sampler, X_pending=pending)
    ref = qLogExpectedImprovement(model, best_f=Y.max(), X_pending=pending, tau_max=acqf.tau_max,
                                  sampler=SobolQMCNormalSampler(torch.Size([256]), seed=0))
    torch.testing.assert_close(acqf(Xc), ref(Xc))  # pending: qLogEI on the joint posterior
    # a temperature the user sets is kept
    assert PFNBatchLogExpectedImprovement(model, best_f=Y.max(), tau_max=0.05).tau_max == 0.05
