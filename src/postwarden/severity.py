"""Finding severities, most severe first: shared by checks, audit rules and the command line.

Security: none (constants).
Standards: the report contract of DESIGN.md (severity words and their order).
"""

from __future__ import annotations

SEVERITIES = ("critical", "high", "medium", "low", "info")
