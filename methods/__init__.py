"""One file per method; importing this package registers every method (auto-discovered).

Shared building blocks live in ``methods.blocks`` (networks, losses, anomaly maps), never in a method file.
"""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "blocks":
        importlib.import_module(f"{__name__}.{_mod.name}")
