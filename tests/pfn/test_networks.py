#!/usr/bin/env python3
r"""Network lookup (`botorch_community.pfn.networks`): loaded once per process and
shared by every model, whichever route names it (`PFNModel(X, Y)`, `checkpoint_url`,
`construct_inputs`, Ax)."""

import os
import time

import pytest
import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.utils.datasets import SupervisedDataset

from botorch_community.models.prior_fitted_network import PFNModel
from botorch_community.pfn import networks
from botorch_community.pfn.checkpoint import DEFAULT_WEIGHTS, save_pretrained
from botorch_community.pfn.testing import random_pfn

TINY = dict(num_features=4, emsize=16, nlayers=1, nhead=2, nhid=32)
HAS_DEFAULT = DEFAULT_WEIGHTS.with_name("default.safetensors").exists()


def _data(n=6, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    return X, X.sum(-1, keepdim=True).sin()


@pytest.fixture
def saved(tmp_path):
    net = random_pfn(**TINY, seed=1)
    save_pretrained(net, tmp_path / "net")
    return tmp_path / "net"


@pytest.mark.skipif(not HAS_DEFAULT, reason="the default weights are not installed")
def test_models_without_model_share_one_default_network():
    X, Y = _data()
    a = PFNModel(X, Y)
    b = PFNModel(*_data(n=9, d=3, seed=1))
    assert a.pfn is b.pfn  # one network per process, not one per model
    assert a.pfn is networks.default_network() is networks.load_network()
    assert a.pfn is networks.load_network(None) is networks.load_network("default")
    assert not any(p.requires_grad for p in a.pfn.parameters())
    # construct_inputs (Ax's route) gives the same object
    ds = SupervisedDataset(X, Y, feature_names=["a", "b"], outcome_names=["y"])
    assert PFNModel(**PFNModel.construct_inputs(ds)).pfn is a.pfn
    # and each model still has its own context
    with torch.no_grad():
        a.posterior(X[:2])
        b.posterior(torch.rand(2, 3, dtype=torch.float64))
    assert a.kv_cache is not None and a.kv_cache is not b.kv_cache


def test_checkpoint_url_is_a_shared_local_path(saved):
    X, Y = _data()
    a = PFNModel(X, Y, checkpoint_url=str(saved))
    b = PFNModel(X, Y, checkpoint_url=f"{saved}.safetensors")  # another spelling
    c = PFNModel(X, Y, checkpoint_url=f"{saved}.json")
    assert a.pfn is b.pfn is c.pfn is networks.load_network(saved)
    assert a.pfn.num_features == TINY["num_features"]
    with pytest.raises(UnsupportedError, match="checkpoint_url=.*looks like a URL"):
        PFNModel(X, Y, checkpoint_url="https://example.com/net")
    with pytest.raises(FileNotFoundError, match="nor a checkpoint"):
        PFNModel(X, Y, checkpoint_url=str(saved.with_name("missing")))
    with pytest.raises(UnsupportedError, match="must be a botorch_community.pfn"):
        PFNModel(X, Y, model=torch.nn.Linear(2, 2))


def test_changed_file_is_reloaded_and_cache_can_be_cleared(saved):
    first = networks.load_network(saved)
    assert networks.load_network(saved) is first
    time.sleep(0.01)
    save_pretrained(random_pfn(**TINY, seed=2), saved)  # rewritten: new mtime
    st = os.stat(f"{saved}.safetensors")
    os.utime(f"{saved}.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = networks.load_network(saved)
    assert second is not first
    assert networks.load_network(saved) is second
    networks.clear_network_cache()
    assert networks.load_network(saved) is not second


def test_registered_names_and_errors():
    net = random_pfn(**TINY)
    networks.register_network("tiny-for-test", net)
    assert networks.load_network("tiny-for-test") is net
    assert networks.load_network(net) is net
    X, Y = _data()
    assert PFNModel(X, Y, checkpoint_url="tiny-for-test").pfn is net  # an alias
    with pytest.raises(ValueError, match="other than 'default'"):
        networks.register_network("default", net)
    with pytest.raises(UnsupportedError, match="needs a PFNTransformer"):
        networks.register_network("x", torch.nn.Linear(1, 1))
    with pytest.raises(UnsupportedError, match="URL"):
        networks.load_network("https://example.com/net")
    with pytest.raises(FileNotFoundError, match="registered network name"):
        networks.load_network("no-such-net")
    with pytest.raises(UnsupportedError, match="must be 'default'"):
        networks.load_network(3)


def test_ax_module_reexports_the_same_functions():
    import botorch_community.ax as bax
    from botorch_community.models import _model_options

    assert bax.load_network is networks.load_network
    assert bax.register_network is networks.register_network
    assert bax.clear_network_cache is networks.clear_network_cache
    assert bax.construct_pfn_inputs is _model_options.construct_pfn_inputs
    assert bax.PFN_MODEL_OPTIONS is _model_options.PFN_MODEL_OPTIONS
