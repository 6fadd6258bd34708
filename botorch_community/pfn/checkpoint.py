#!/usr/bin/env python3
r"""Saving and loading PFN networks: safetensors weights plus a JSON config, no pickle.

A checkpoint is a pair of files sharing a stem: ``<stem>.safetensors`` (the tensors) and
``<stem>.json`` (the constructor arguments of :class:`PFNTransformer`, the bucket
borders, the tensor names and shapes, the weights file's SHA-256, and free-form
metadata such as the prior and the training run). Loading never unpickles anything: a
file that is not safetensors (a ``torch.save`` zip, a pickle) is refused with a clear
error, and the weights must match the architecture the config describes.

``load_pretrained()`` with no path loads the default network shipped in the package
(``botorch_community/pfn/weights/default.{safetensors,json}``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from botorch_community.pfn.cell_transformer import build_network
from botorch_community.pfn.config import PFNConfig
from botorch_community.pfn.transformer import PFNTransformer

__all__ = [
    "CheckpointError",
    "DEFAULT_WEIGHTS",
    "HIGHD_WEIGHTS",
    "BUILTIN_WEIGHTS",
    "checkpoint_paths",
    "load_pretrained",
    "read_checkpoint_config",
    "shipped_network_name",
    "save_pretrained",
]

FORMAT = "botorch_community.pfn.PFNTransformer"
FORMAT_VERSION = 1
#: Stem of the default network shipped with the package.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default"
#: The shipped high-dimensional network (cell tokens, `d` up to 100).
HIGHD_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default_highd"
#: The shipped networks by name: the default (row tokens, `d <= 18`) and the
#: high-dimensional one (cell tokens, `d <= 100`).
BUILTIN_WEIGHTS = {"default": DEFAULT_WEIGHTS, "default_highd": HIGHD_WEIGHTS}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    r"""A checkpoint is missing, corrupted, not safetensors, or does not match its
    config."""


PathLike = Union[str, os.PathLike]


def checkpoint_paths(path: PathLike) -> tuple[Path, Path]:
    r"""The ``(weights, config)`` file pair of a checkpoint.

    `path` may name either file, their common stem, or a directory (then the stem is
    ``<dir>/model``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model"
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_pretrained(
    net: PFNTransformer,
    path: PathLike,
    *,
    dtype: Optional[torch.dtype] = None,
    metadata: Optional[dict[str, Any]] = None,
) -> tuple[Path, Path]:
    r"""Save a network as ``<stem>.safetensors`` + ``<stem>.json``.

    Args:
        net: The network (a DDP/compiled wrapper's ``.module`` is unwrapped).
        path: Stem, either file name, or a directory (see :func:`checkpoint_paths`).
        dtype: Store floating-point weights in this dtype (e.g. ``torch.float16`` to
            halve the file); the bucket borders are always stored in float32. Default:
            as they are.
        metadata: JSON-serialisable extra information stored in the config file.

    Returns:
        The paths of the weights and config files (written atomically, weights first).
    """
    from safetensors.torch import save as st_save

    net = getattr(net, "module", net)
    net = getattr(net, "_orig_mod", net)
    w_path, c_path = checkpoint_paths(path)
    w_path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, t in net.state_dict().items():
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point() and name != "borders":
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    tensors["borders"] = net.borders.detach().to("cpu", torch.float32).contiguous()
    dtype_name = {v: k for k, v in _DTYPES.items()}.get(
        dtype or next(net.parameters()).dtype, str(dtype)
    )
    _atomic_write_bytes(w_path, st_save(tensors, metadata={"format": FORMAT}))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": net.config.to_dict(),
        "borders": net.borders.detach().cpu().double().tolist(),
        "weights_dtype": dtype_name,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "sha256": _sha256(w_path),
        "metadata": metadata or {},
    }
    _atomic_write_bytes(c_path, (json.dumps(config, indent=1) + "\n").encode())
    return w_path, c_path


def read_checkpoint_config(path: Optional[PathLike] = None) -> dict[str, Any]:
    r"""The JSON config of a checkpoint (the shipped default when `path` is None; a
    name of :data:`BUILTIN_WEIGHTS` reads that shipped network's)."""
    if path is None or (isinstance(path, str) and path in BUILTIN_WEIGHTS):
        path = BUILTIN_WEIGHTS["default" if path is None else path]
    _, c_path = checkpoint_paths(path)
    if not c_path.exists():
        raise FileNotFoundError(f"No checkpoint config at {c_path}.")
    try:
        cfg = json.loads(c_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"The checkpoint config {c_path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(
            f"{c_path} is not a PFN checkpoint config (expected 'format': '{FORMAT}')."
        )
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{c_path} has format_version {cfg.get('format_version')}; this code reads "
            f"up to {FORMAT_VERSION}. Upgrade the package."
        )
    for key in ("config", "borders"):
        if key not in cfg:
            raise CheckpointError(f"The checkpoint config {c_path} lacks '{key}'.")
    return cfg


def _check_not_pickle(w_path: Path) -> None:
    with open(w_path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{w_path} is a zip archive (a torch.save / pickle checkpoint), not "
            "safetensors. This loader never unpickles files; convert it with "
            "save_pretrained on a trusted machine."
        )
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        raise CheckpointError(
            f"{w_path} is a pickle file, not safetensors. This loader never unpickles "
            "files; convert it with save_pretrained on a trusted machine."
        )
    if len(head) < 8:
        raise CheckpointError(f"{w_path} is truncated or empty ({len(head)} bytes).")
    header_len = int.from_bytes(head, "little")
    size = w_path.stat().st_size
    if header_len > size - 8 or header_len > 100_000_000:
        raise CheckpointError(
            f"{w_path} is not a valid safetensors file (its header length {header_len} "
            f"exceeds the file size {size}): truncated, corrupted, or another format."
        )


def _read_safetensors(w_path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    _check_not_pickle(w_path)
    try:
        out = {}
        with safe_open(str(w_path), framework="pt", device="cpu") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
        return out
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(
            f"{w_path} could not be read as safetensors (truncated or corrupted?): "
            f"{type(e).__name__}: {e}"
        ) from None


def _safetensors_shapes(w_path: Path) -> dict[str, tuple[int, ...]]:
    r"""Tensor shapes from a safetensors header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(w_path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(
            f"{w_path} could not be read as safetensors (truncated or corrupted?): "
            f"{type(e).__name__}: {e}"
        ) from None


def _describe_mismatch(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> list[str]:
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing from the weights: {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(
            f"in the weights but not in the architecture: {unexpected[:10]}"
            + (" ..." if len(unexpected) > 10 else "")
        )
    for k in sorted(set(expected) & set(found)):
        if tuple(expected[k]) != tuple(found[k]):
            problems.append(f"{k}: config expects shape {tuple(expected[k])}, weights have {tuple(found[k])}")
    return problems


def shipped_network_name(dim: Optional[int] = None) -> str:
    r"""Which shipped network ``"default"`` means for inputs of dimension `dim`: the
    default network where it takes `dim` inputs (or `dim` is None), else
    ``"default_highd"``."""
    return "default" if dim is None or dim <= _default_max_features() else "default_highd"


@functools.lru_cache(maxsize=1)
def _default_max_features() -> int:
    return read_checkpoint_config(DEFAULT_WEIGHTS)["config"]["num_features"]


def load_pretrained(
    path: Optional[PathLike] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    verify_hash: bool = True,
    dim: Optional[int] = None,
) -> PFNTransformer:
    r"""Load a network saved by :func:`save_pretrained`.

    Args:
        path: Stem, either file, or a directory (see :func:`checkpoint_paths`). None
            (or ``"default"``): the default network shipped with the package, or for
            `dim` above its ``num_features`` (18) the shipped high-dimensional network
            (also ``"default_highd"``).
        device: Where to put the network.
        dtype: Parameter dtype of the returned network (weights stored in half
            precision are cast up; float32 by default).
        verify_hash: Check the weights file against the SHA-256 in the config (if
            present), which detects corrupted or swapped weight files.
        dim: The input dimension the network is for (picks the shipped network when
            `path` is None).

    Returns:
        The :class:`PFNTransformer`, in eval mode. The config's ``metadata`` is attached
        as ``net.checkpoint_metadata``.

    Raises:
        FileNotFoundError: A file is missing.
        CheckpointError: Corrupted, truncated, not safetensors (nothing is unpickled),
            or the weights do not match the architecture in the config (the message
            lists what differs).
    """
    if path is None or path in BUILTIN_WEIGHTS:
        name = shipped_network_name(dim) if path in (None, "default") else path
        stem = BUILTIN_WEIGHTS[name]
        if not checkpoint_paths(stem)[0].exists():
            raise FileNotFoundError(
                f"The default PFN weights are not installed ({stem}.safetensors is "
                "missing). Reinstall the package, or pass a path to load_pretrained."
            )
    else:
        stem = path
    w_path, c_path = checkpoint_paths(stem)
    if not w_path.exists():
        raise FileNotFoundError(f"No weights file at {w_path}.")
    cfg = read_checkpoint_config(c_path)
    try:  # every field checked before anything is built
        model_cfg = PFNConfig.from_dict(cfg["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{c_path}: invalid architecture config: {e}") from None
    _check_not_pickle(w_path)
    if verify_hash and cfg.get("sha256"):
        digest = _sha256(w_path)
        if digest != cfg["sha256"]:
            raise CheckpointError(
                f"{w_path} does not match its config {c_path}: SHA-256 {digest[:16]}... "
                f"differs from the recorded {cfg['sha256'][:16]}... (the file is "
                "corrupted, truncated, or was replaced). Pass verify_hash=False to skip "
                "this check if you replaced it deliberately."
            )
    borders = torch.tensor(cfg["borders"], dtype=torch.float32)
    try:  # the architecture's shapes without allocating it (meta device)
        with torch.device("meta"):
            meta_borders = torch.empty(model_cfg.num_buckets + 1)  # checked below
            shapes = build_network(model_cfg, borders=meta_borders).state_dict()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{c_path}: invalid architecture config: {e}") from None
    expected = {k: tuple(v.shape) for k, v in shapes.items()}
    found = _safetensors_shapes(w_path)  # from the header: nothing loaded yet
    problems = _describe_mismatch(expected, found)
    if problems:
        arch = ", ".join(f"{k}={v}" for k, v in model_cfg.to_dict().items())
        raise CheckpointError(
            f"The weights {w_path} do not match the architecture in {c_path} ({arch}):\n  - "
            + "\n  - ".join(problems)
        )
    net = build_network(model_cfg, borders=borders)
    tensors = _read_safetensors(w_path)
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{w_path}: tensor {k} holds non-finite values.")
    if not torch.allclose(tensors["borders"].float(), borders, rtol=1e-6, atol=1e-6):
        raise CheckpointError(
            f"The borders in {w_path} differ from those in {c_path} "
            f"(max difference {(tensors['borders'].float() - borders).abs().max():.3g})."
        )
    net.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    net = net.to(device=device, dtype=dtype)
    net.checkpoint_metadata = cfg.get("metadata", {})
    return net.eval()
