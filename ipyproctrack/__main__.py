"""``python -m ipyproctrack``: the command line (see ``_cli``)."""

from __future__ import annotations

import sys

from ipyproctrack._cli import main

if __name__ == "__main__":
    sys.exit(main())
