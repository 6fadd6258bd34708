#!/usr/bin/env python3
r"""Make botorch's bundled ``botorch_community`` modules importable next to ours.

botorch's wheel installs a regular package named ``botorch_community``. Ours is imported
instead (it comes first on ``sys.path``: see README's install notes and
``tests/test_packaging.py``), and each of our subpackages appends botorch's folder of the
same name to its ``__path__``. A submodule we do not define (e.g.
``botorch_community.models.vblls``) is then found in botorch's copy, while a submodule we
do define is always ours, because our folder comes first.
"""

from __future__ import annotations

import os
import sys


def extend_with_upstream(path: list[str], package_name: str) -> list[str]:
    r"""Append every other ``sys.path`` folder holding `package_name` to `path`.

    Args:
        path: The package's ``__path__`` (ours first).
        package_name: Dotted package name, e.g. ``"botorch_community.models"``.

    Returns:
        A new list: `path` followed by the other folders, in ``sys.path`` order.
    """
    parts = package_name.split(".")
    ours = {os.path.realpath(p) for p in path}
    extended = list(path)
    for entry in sys.path:
        candidate = os.path.join(entry or os.getcwd(), *parts)
        real = os.path.realpath(candidate)
        if real not in ours and os.path.isfile(os.path.join(candidate, "__init__.py")):
            ours.add(real)
            extended.append(candidate)
    return extended
