"""Postfix and Dovecot logs: one parser feeding summaries, detectors, bans, alerts and metrics.

Security: the compiled fast path (``postwarden.compiled``) is used only when its build
matches these sources and this interpreter; otherwise everything is pure Python.
Standards: PEP 302/451 package ``__path__``; mypyc extension modules.

Theory of operation: ``scripts/build_compiled.py`` compiles the hot modules of ``logs
summary`` (``COMPILED_MODULES``) with mypyc; ``postwarden.compiled.use_compiled`` puts that
build first on this package's ``__path__`` when it is fresh, and ``COMPILED`` says whether
it did.
"""

from __future__ import annotations

from postwarden import compiled as _compiled

COMPILED_MODULES = _compiled.PACKAGES["logs"]
STAMP = _compiled.stamp_name("logs")
SHARED_LIBRARY = _compiled.SHARED_LIBRARY
COMPILED = _compiled.use_compiled("logs", __path__)
