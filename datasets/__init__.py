"""Dataset adapters (one per release family), preprocessing recipes and the slice store.

Importing this package registers every adapter in ``datasets.adapters`` (auto-discovered).
"""

import importlib
import pkgutil

from datasets import adapters as _adapters

for _mod in pkgutil.iter_modules(_adapters.__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{_adapters.__name__}.{_mod.name}")
