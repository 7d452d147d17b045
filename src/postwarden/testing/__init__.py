"""Public fakes for tests of postwarden and of users' own scripts.

Security: test code only; nothing here opens a socket or reads a file.
Standards: none.
"""

from __future__ import annotations

from postwarden.testing.dns import FakeResolver

__all__ = ["FakeResolver"]
