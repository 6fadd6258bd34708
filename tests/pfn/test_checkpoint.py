#!/usr/bin/env python3
r"""save_pretrained / load_pretrained: safetensors + JSON, never pickle."""

import json
import pickle

import pytest
import torch
from botorch_community.pfn import CheckpointError, load_pretrained, PFNTransformer, save_pretrained
from botorch_community.pfn.checkpoint import checkpoint_paths, DEFAULT_WEIGHTS, read_checkpoint_config


def _net(**kw):
    torch.manual_seed(0)
    cfg = dict(num_features=3, emsize=16, nlayers=2, nhead=2, nhid=24, num_buckets=12, max_context=30)
    cfg.update(kw)
    return PFNTransformer(**cfg)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 5, 3, generator=g), torch.randn(2, 5, 1, generator=g), torch.rand(2, 4, 3, generator=g)


def test_roundtrip_float32_exact_and_eval_mode(tmp_path):
    net = _net()
    w, c = save_pretrained(net, tmp_path / "m", metadata={"note": "hi"})
    assert w.name == "m.safetensors" and c.name == "m.json"
    for p in (tmp_path / "m", w, c):  # stem, either file
        loaded = load_pretrained(p)
        assert not loaded.training
        assert loaded.config == net.config
        assert loaded.checkpoint_metadata == {"note": "hi"}
        for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), k
    save_pretrained(net, tmp_path)  # a directory: <dir>/model.*
    assert (tmp_path / "model.safetensors").exists()
    load_pretrained(tmp_path)


def test_half_precision_storage_loads_as_float32(tmp_path):
    net = _net()
    net.borders.copy_(torch.linspace(-3, 3, 13) + 1e-4 * torch.arange(13))
    save_pretrained(net, tmp_path / "h", dtype=torch.float16)
    loaded = load_pretrained(tmp_path / "h")
    assert loaded.x_encoder.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.borders, net.borders, atol=0, rtol=0)  # borders stay float32
    X, Y, T = _data()
    torch.testing.assert_close(loaded(X, Y, T), net.eval()(X, Y, T), atol=5e-3, rtol=0)
    assert read_checkpoint_config(tmp_path / "h")["weights_dtype"] == "float16"


def test_shipped_default_loads_and_predicts():
    w, c = checkpoint_paths(DEFAULT_WEIGHTS)
    if not w.exists():
        pytest.skip("no shipped weights in this checkout")
    net = load_pretrained()
    assert not net.training and net.num_features == 18 and net.num_buckets == 1000
    assert net.x_encoder.weight.dtype == torch.float32
    X, Y, T = _data()
    for n in (0, 5):
        out = net(X[:, :n], Y[:, :n], T)
        assert out.shape == (2, 4, 1000) and torch.isfinite(out).all()


def test_truncated_and_corrupted_files(tmp_path):
    w, c = save_pretrained(_net(), tmp_path / "m")
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_pretrained(tmp_path / "m", verify_hash=False)
    w.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(tmp_path / "m", verify_hash=False)
    bad = bytearray(data)
    bad[-7] ^= 0xFF  # flip bits in the last tensor's data
    w.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_pretrained(tmp_path / "m")
    w.write_bytes(data)
    c.write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_pretrained(tmp_path / "m")
    c.unlink()
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "m")


def test_wrong_architecture_says_what_differs(tmp_path):
    save_pretrained(_net(), tmp_path / "a")
    save_pretrained(_net(emsize=32, nlayers=3), tmp_path / "b")
    # weights of b with the config of a
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "b.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path / "a", verify_hash=False)
    msg = str(e.value)
    assert "do not match the architecture" in msg and "emsize=16" in msg
    assert "x_encoder.weight: config expects shape (16, 3), weights have (32, 3)" in msg
    assert "layers.2" in msg  # an extra layer in the weights
    # the mismatch is found from the safetensors header before anything real is built
    import botorch_community.pfn.checkpoint as ck

    built = []
    real = ck.build_network

    def spy(*args, **kwargs):
        net = real(*args, **kwargs)
        built.append(net.x_encoder.weight.device.type)
        return net

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ck, "build_network", spy)
        with pytest.raises(CheckpointError, match="do not match the architecture"):
            load_pretrained(tmp_path / "a", verify_hash=False)
    assert built == ["meta"]
    # an unknown architecture key in the config
    cfg = json.loads((tmp_path / "b.json").read_text())
    cfg["config"]["n_experts"] = 4
    (tmp_path / "b.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="n_experts"):
        load_pretrained(tmp_path / "b")


class _Boom:
    def __reduce__(self):  # unpickling this would call exec
        return (exec, ("import builtins; builtins._PFN_PWNED = True",))


def test_pickle_files_are_refused_and_never_unpickled(tmp_path):
    import builtins

    net = _net()
    _, c = save_pretrained(net, tmp_path / "m")
    w = tmp_path / "m.safetensors"
    w.write_bytes(pickle.dumps({"x": _Boom()}, protocol=4))
    with pytest.raises(CheckpointError, match="pickle"):
        load_pretrained(tmp_path / "m", verify_hash=False)
    torch.save({"state_dict": net.state_dict(), "boom": _Boom()}, w)
    with pytest.raises(CheckpointError, match="torch.save"):
        load_pretrained(tmp_path / "m", verify_hash=False)
    assert not hasattr(builtins, "_PFN_PWNED")


@pytest.mark.parametrize("part", ["metric_attention", "noise_hint", "gp_head"])
def test_roundtrip_grown_parts(tmp_path, part):
    net = _net(**{"metric_attention": True, part: True})
    with torch.no_grad():  # switch the part on (it starts (nearly) off)
        for layer in net.layers:
            layer.metric_gate.normal_()
        if part == "noise_hint":
            net.noise_encoder.weight.normal_(0.0, 0.1)
        if part == "gp_head":
            net.gp.hyper.weight.normal_(0.0, 0.1)
            net.gp.mix.bias.fill_(0.0)
    save_pretrained(net, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert getattr(loaded.config, part) and loaded.config == net.config
    tX, tY, X = _data()
    torch.testing.assert_close(loaded(tX, tY, X), net.eval()(tX, tY, X))
    # a config without the part is refused, naming its tensors
    cfg = json.loads((tmp_path / "m.json").read_text())
    if part != "metric_attention":  # (metric gates were switched on above)
        del cfg["config"][part]
    else:
        del cfg["config"]["metric_attention"]
    cfg["config"].pop("gp_particles", None)
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match={"metric_attention": "metric_",
                                               "noise_hint": "noise_encoder",
                                               "gp_head": "gp."}[part]):
        load_pretrained(tmp_path / "m", verify_hash=False)


@pytest.mark.parametrize(
    "field, value",
    [("emsize", 8192 * 1024), ("emsize", -256), ("nhead", 0), ("dropout", 5), ("emsize", "256"),
     ("gp_head", 1), ("target_readout", True), ("unknown_option", 1)],
)
def test_config_fields_are_checked_before_anything_is_built(tmp_path, field, value):
    save_pretrained(_net(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m.json").read_text())
    cfg["config"][field] = value
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=field):
        load_pretrained(tmp_path / "m", verify_hash=False)


def test_old_checkpoint_configs_with_removed_options_off_still_load(tmp_path):
    save_pretrained(_net(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m.json").read_text())
    cfg["config"].update(gaussian_head=False, target_readout=False)
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    assert load_pretrained(tmp_path / "m", verify_hash=False).config == _net().config


def test_read_checkpoint_config_takes_the_shipped_names():
    # a run's lineage (train.init_from="default_highd") reads the shipped config by name
    assert read_checkpoint_config("default_highd")["config"]["tokens"] == "cells"
    assert read_checkpoint_config("default") == read_checkpoint_config()
