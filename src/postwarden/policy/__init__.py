"""postwarden policyd: greylisting, SPF and rate limits for Postfix's check_policy_service.

Security: the compiled fast path (``postwarden.compiled``) is used only when its build
matches these sources and this interpreter; otherwise everything is pure Python.
Standards: PEP 302/451 package ``__path__``; mypyc extension modules.

Theory of operation: ``scripts/build_compiled.py`` compiles the modules every request runs
through (``COMPILED_MODULES``: the codec, the records, greylisting and the decision
pipeline) with mypyc; ``postwarden.compiled.use_compiled`` puts that build first on this
package's ``__path__`` when it is fresh, and ``COMPILED`` says whether it did. The store,
SPF, rate limits and the server stay interpreted.
"""

from __future__ import annotations

from postwarden import compiled as _compiled

COMPILED_MODULES = _compiled.PACKAGES["policy"]
COMPILED = _compiled.use_compiled("policy", __path__)
