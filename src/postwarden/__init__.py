"""postwarden: make a Postfix mail server secure and keep it secure.

Security: nothing here; see the feature packages.
Standards: none.
"""

from __future__ import annotations

__version__ = "0.1.0"
