#!/usr/bin/env python3
r"""Register the PFN models with Ax when Ax is imported, without importing Ax.

:mod:`botorch_community.ax` depends on Ax; nothing in the package imports it. Instead,
:func:`install` (called once by ``botorch_community/__init__.py``) arranges for
:func:`botorch_community.ax.register_with_ax` to run right after the ``ax`` package is
imported (at once if it already is). So an Ax experiment naming ``PFNModel`` or a
discretized acquisition function loads from JSON whenever any ``botorch_community``
module has been imported, and importing our models costs no Ax import (seconds).

This module imports neither Ax nor :mod:`botorch_community.ax` at module level, and
nothing but the standard library.
"""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["install", "uninstall"]


def _register() -> None:
    r"""Import :mod:`botorch_community.ax` and run its registrations (never raises)."""
    try:
        importlib.import_module("botorch_community.ax").register_with_ax()
    except Exception as e:  # never break `import ax` or `import botorch_community`
        warnings.warn(
            f"Registering PFN models with Ax failed ({type(e).__name__}: {e}); "
            "call botorch_community.ax.register_with_ax() to see the error.",
            RuntimeWarning,
            stacklevel=3,
        )


class _AxImportHook:
    r"""Runs the registrations right after the ``ax`` package has been executed.

    A ``sys.meta_path`` finder (duck-typed: ``importlib.abc`` is not imported, to keep
    ``import botorch_community`` cheap).

    It finds ``ax``'s spec through the other finders and wraps that spec's loader, so
    the registrations follow the first successful ``import ax`` (or of any ``ax.*``
    module, which imports the package first). A mere ``importlib.util.find_spec("ax")``
    executes nothing and leaves the hook in place.
    """

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> object:
        if fullname != "ax":
            return None
        spec = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None  # let the import system report or handle it as usual
        loader_exec = loader.exec_module

        def exec_module(module: object) -> None:
            loader_exec(module)
            uninstall()
            _register()

        loader.exec_module = exec_module  # this spec's loader instance only
        return spec


_HOOK = _AxImportHook()


def uninstall() -> None:
    r"""Remove the import hook (the registrations ran, or are no longer wanted)."""
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install() -> None:
    r"""Register with Ax now if ``ax`` is imported, else when it gets imported.

    Idempotent. A no-op (bar one entry in ``sys.meta_path`` until ``import ax``) when
    Ax is not installed.
    """
    if sys.modules.get("ax") is not None:
        uninstall()
        _register()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
