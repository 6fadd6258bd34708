#!/usr/bin/env python3
r"""Network lookup: which :class:`PFNTransformer` a name, a path or ``"default"`` means.

Every route to a network goes through :func:`load_network`: ``PFNModel(X, Y)`` without
``model=`` (the default network, or ``checkpoint_url=<path>``),
``PFNModel.construct_inputs`` (Ax's ``ModelConfig.model_options``) and
:mod:`botorch_community.ax`. A checkpoint is read, hash-checked and built once per
process and device; every later lookup of the same file (by any spelling of its path)
returns that same object until the file changes (its modification time or size). The
network is inference-only (``requires_grad_(False)``) and shared: models keep their own
encoded contexts, never a copy of the weights.

Names: :func:`register_network` makes an in-memory network available under a name (Ax
deep-copies model options, so options carry names, never network objects).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional, Union

import torch
from botorch.exceptions.errors import UnsupportedError

from botorch_community.pfn.checkpoint import (
    BUILTIN_WEIGHTS,
    checkpoint_paths,
    load_pretrained,
    shipped_network_name,
)
from botorch_community.pfn.transformer import PFNTransformer

__all__ = [
    "BUILTIN_NETWORKS",
    "NetworkSpec",
    "clear_network_cache",
    "default_network_name",
    "default_network",
    "load_network",
    "network_reference",
    "register_network",
    "resolve_network_reference",
]

#: What names a network: ``"default"`` or None, a registered name, a local checkpoint
#: path, or a network object.
NetworkSpec = Union[None, str, os.PathLike, PFNTransformer]

_LOCK = threading.RLock()
_LOADED: dict[tuple, PFNTransformer] = {}  # (weights file, mtime, size, device) -> net
_REGISTERED: dict[str, PFNTransformer] = {}  # user-given names -> in-memory nets
# id(net) -> (checkpoint name or path, device, weights state at load): what a loaded
# network can be pickled as (see `network_reference`)
_ORIGIN: dict[int, tuple] = {}


def register_network(name: str, network: PFNTransformer) -> None:
    r"""Make an in-memory network available under `name` (e.g. to Ax).

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


#: The shipped networks by name (:data:`~botorch_community.pfn.checkpoint.BUILTIN_WEIGHTS`).
BUILTIN_NETWORKS = BUILTIN_WEIGHTS
#: Which shipped network ``"default"`` means for `d` inputs
#: (:func:`~botorch_community.pfn.checkpoint.shipped_network_name`).
default_network_name = shipped_network_name


def load_network(
    network: NetworkSpec = "default",
    device: Union[str, torch.device, None] = None,
    dim: Optional[int] = None,
) -> PFNTransformer:
    r"""The network named by `network`, loaded at most once per process and device.

    Args:
        network: ``"default"`` or None (the shipped network for inputs of dimension
            `dim`: :func:`default_network_name`), ``"default_highd"`` (the shipped
            high-dimensional network), a name given to :func:`register_network`, a
            local checkpoint path (stem, either file, or a directory; see
            :func:`botorch_community.pfn.checkpoint.checkpoint_paths`), or a
            :class:`PFNTransformer` (returned as is).
        device: Where the network should live (default: CPU).
        dim: The input dimension the network will see: picks the shipped network
            for ``"default"`` (None: the default network, `d <= 18`).

    Returns:
        The shared, inference-only network. Loading the same file again (by any
        spelling of its path) returns the same object, unless the file changed.

    Raises:
        UnsupportedError: `network` is a URL (nothing is downloaded) or of another type.
        FileNotFoundError: No registered network of that name and no checkpoint there.
        botorch_community.pfn.CheckpointError: The checkpoint is corrupted or invalid.
    """
    if isinstance(network, PFNTransformer):
        return network
    if network is not None and not isinstance(network, (str, os.PathLike)):
        raise UnsupportedError(
            "`network` must be 'default', a checkpoint path, a name registered with "
            "register_network (botorch_community.pfn.networks, also exported by "
            "botorch_community.ax), or a PFNTransformer; got "
            f"{type(network).__name__}."
        )
    device = torch.device("cpu" if device is None else device)
    name = None if network is None else os.fspath(network)
    with _LOCK:
        if name is not None and name in _REGISTERED:
            return _REGISTERED[name]  # as registered (its device is the user's choice)
        if name is not None and "://" in name:
            raise UnsupportedError(
                f"network={name!r} looks like a URL; nothing is downloaded at run "
                "time. Pass a local checkpoint path, a registered name, or 'default'."
            )
        if name in (None, "default"):
            name = default_network_name(dim)
        is_default = name in BUILTIN_NETWORKS
        stem = BUILTIN_NETWORKS[name] if is_default else Path(name).expanduser()
        w_path, _ = checkpoint_paths(stem)
        if not w_path.exists():
            if is_default:
                raise FileNotFoundError(
                    f"The shipped PFN weights {name!r} are not installed ({w_path} is "
                    "missing). Reinstall the package, or pass network=<checkpoint path>."
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
            net = load_pretrained(stem, device=device)
            net.requires_grad_(False)
            _LOADED[key] = net
            _ORIGIN[id(net)] = (name if is_default else str(w_path.resolve()),
                                str(device), net.weights_state())  # fmt: skip
        return net


def network_reference(network: PFNTransformer) -> Union[None, tuple]:
    r"""How to find `network` again in another process, if it can be: ``("name",
    name)`` for a registered network, ``("checkpoint", path_or_default, device)`` for
    one loaded by :func:`load_network` whose weights were not changed since; else None
    (pickle it by value)."""
    with _LOCK:
        for name, net in _REGISTERED.items():
            if net is network:
                return ("name", name)
        origin = _ORIGIN.get(id(network))
        if origin is not None and any(n is network for n in _LOADED.values()):
            path, device, state = origin
            if network.weights_state() == state:
                return ("checkpoint", path, device)
    return None


def resolve_network_reference(ref: tuple) -> PFNTransformer:
    r"""The network a :func:`network_reference` names, in this process."""
    if ref[0] == "name":
        with _LOCK:
            net = _REGISTERED.get(ref[1])
        if net is None:
            raise FileNotFoundError(
                f"This object was pickled with the network registered as {ref[1]!r}; "
                f"call botorch_community.pfn.networks.register_network({ref[1]!r}, net) "
                "in this process before unpickling it."
            )
        return net
    return load_network(ref[1], ref[2])


def default_network(device: Union[str, torch.device, None] = None) -> PFNTransformer:
    r"""The shared default network shipped with the package (``load_network()``)."""
    return load_network("default", device)
