#!/usr/bin/env python3
r"""BoTorch community extension: fast, dependable PFN surrogates for Bayesian optimization.

This package deliberately shadows the ``botorch_community`` package that ships inside the
botorch wheel: our PFN modules (``models.prior_fitted_network``, ``posteriors.riemann``,
``acquisition.discretized``) replace upstream's, while botorch's other community modules
stay importable because every subpackage's ``__path__`` is extended with botorch's copy
of the same folder (see :mod:`botorch_community._path`).
"""

from botorch_community._path import extend_with_upstream

__path__ = extend_with_upstream(__path__, __name__)

__version__ = "0.1.0"

# Ax integration, installed once from here: `botorch_community.ax.register_with_ax()`
# runs when Ax is imported (now, if it already is). Neither Ax nor our `ax` module is
# imported here; see `botorch_community/_ax_hook.py`.
from botorch_community import _ax_hook  # noqa: E402

_ax_hook.install()
