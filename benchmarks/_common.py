#!/usr/bin/env python3
r"""Helpers shared by the benchmark scripts (no imports of the package at import time).

* :func:`use_checkout` puts the repository root first on ``sys.path``, so the scripts
  measure the code in this checkout (not a possibly stale installed copy).
* :func:`run_worker` runs one measurement in a fresh Python subprocess (so each variant's
  peak memory is its own) and returns the JSON dict the worker printed last.
* :class:`PeakMemory` measures the peak memory of a block: on CPU the growth of the peak
  RSS (``resource.getrusage``) over the RSS at entry, plus the absolute peak RSS; on CUDA
  ``torch.cuda.max_memory_allocated`` over the allocated memory at entry.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULT_MARK = "@@RESULT@@"


def use_checkout() -> None:
    r"""Import ``botorch_community`` from this checkout (first on ``sys.path``)."""
    root = str(REPO_ROOT)
    if root not in sys.path[:1]:
        sys.path.insert(0, root)


def add_common_args(parser, default_out: str) -> None:
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--out", default=None, help=f"output stem (default benchmarks/results/{default_out})"
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--worker", default=None, help=argparse_suppress())


def parse_network_set(items: list) -> dict:
    r"""``["gp_constant_mean=true", ...]`` (a ``--network-set`` argument) ->
    ``{"gp_constant_mean": True, ...}``: inference settings of a network's config."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--network-set expects FIELD=JSON, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--network-set {item!r}: the value is not JSON ({e})")
    return out


def set_threads(n) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def out_stem(args, default_out: str) -> Path:
    stem = Path(args.out) if args.out else BENCH_DIR / "results" / default_out
    if args.quick and not args.out:
        stem = stem.with_name(stem.name + "_quick")
    stem.parent.mkdir(parents=True, exist_ok=True)
    return stem


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class PeakMemory:
    r"""Peak memory of a block. Meaningful for the first large block of a process only
    on CPU (the peak RSS is a high-water mark): run each variant in a fresh process."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = rss_bytes()
            self.start_peak = peak_rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_abs = torch.cuda.max_memory_allocated()
        else:
            self.peak_abs = peak_rss_bytes()
        self.delta = max(self.peak_abs - self.start, 0)
        self.baseline = self.start


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def warm_chain(X, Y, start: int, stop: int, device: str = "cpu", **model_kw):
    r"""A BO loop's chain of warm-started PFN fits, one row added each: for `m` from `start`
    to `stop - 1`, the model of the first `m` rows of `X`, `Y` with `warm_start=` the
    previous one (the first built fresh), encoded by a first posterior call in
    ``cache_training_context()``. `model_kw` go to ``PFNModel`` (e.g. ``model=``).

    Yields:
        `(m, model, seconds)`: the model's build and encode time.
    """
    import torch
    from botorch_community.models.prior_fitted_network import PFNModel

    prev = None
    for m in range(start, stop):
        sync(device)
        t0 = time.perf_counter()
        prev = PFNModel(X[:m], Y[:m], warm_start=prev, **model_kw)
        with prev.cache_training_context(), torch.no_grad():
            prev.posterior(X[:1])
        sync(device)
        yield m, prev, time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def run_worker(
    script: Path,
    spec: dict,
    python: Optional[str] = None,
    timeout: Optional[float] = None,
    env: Optional[dict] = None,
) -> dict:
    r"""Run ``python script --worker JSON`` in a fresh process; return its result dict.

    On failure or timeout the dict has an ``error`` entry instead of figures.
    """
    cmd = [python or sys.executable, str(script), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(BENCH_DIR)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"error": f"worker exited {proc.returncode}: {tail}"}


def emit_result(result: dict) -> None:
    result.setdefault("loadavg_end", os.getloadavg())
    print(RESULT_MARK + json.dumps(result), flush=True)


def machine_info(device: str = "cpu") -> dict:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover
        pass
    try:
        import botorch
        import gpytorch

        info["botorch"] = botorch.__version__
        info["gpytorch"] = gpytorch.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith(("Model name", "CPU(s):", "Thread(s) per core")):
                k, v = line.split(":", 1)
                info["lscpu_" + k.strip()] = v.strip()
    except Exception:  # pragma: no cover
        pass
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "botorch_community"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        info["git_commit"] = rev + (" (+uncommitted changes in botorch_community/)" if dirty else "")
    except Exception:  # pragma: no cover
        pass
    return info


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def fmt_s(x: Optional[float]) -> str:
    if x is None or x != x:
        return "–"
    if x >= 10:
        return f"{x:.1f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 0.01:
        return f"{x * 1e3:.0f} ms"
    return f"{x * 1e3:.1f} ms"


def fmt_mb(b: Optional[float]) -> str:
    if b is None or b != b:
        return "–"
    mb = b / 2**20
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
