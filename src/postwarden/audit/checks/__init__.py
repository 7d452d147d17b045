"""The rule modules, one per category; importing this package registers every rule.

Security: see each module.
Standards: see each module.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
