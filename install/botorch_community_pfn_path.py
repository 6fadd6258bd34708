r"""Put this distribution's ``botorch_community`` ahead of botorch's bundled one.

Imported at interpreter start by ``botorch_community_pfn.pth`` (both files are installed
into site-packages by our wheel). Our package lives in
``site-packages/_botorch_community_pfn/botorch_community``; this inserts that folder into
``sys.path`` just before the site-packages folder itself, so:

- ``import botorch_community`` finds ours rather than the copy inside the botorch wheel,
  from any working directory;
- a script's own folder or the current directory (earlier on ``sys.path``) still comes
  first, so a source checkout being developed is used when run from its root;
- botorch's other community modules stay importable: our packages extend their
  ``__path__`` with botorch's folders (``botorch_community/_path.py``).
"""

import os
import sys


def _install() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.join(here, "_botorch_community_pfn")
    if not os.path.isdir(root) or root in sys.path:
        return
    try:
        index = [os.path.abspath(p) if p else p for p in sys.path].index(here)
    except ValueError:
        index = 0
    sys.path.insert(index, root)


_install()
