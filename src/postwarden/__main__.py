"""Entry point for ``python -m postwarden``.

Security: none beyond the CLI's.
Standards: none.
"""

from __future__ import annotations

import sys

from postwarden.cli import main

sys.exit(main())
