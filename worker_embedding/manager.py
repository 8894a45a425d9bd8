"""`python -m worker_embedding.manager [--preload MODEL]`: starts and supervises this machine's
embedding workers, taking load commands from Redis (see managers/manager.py)."""

from __future__ import annotations

import sys

from contract.keys import Kind
from managers.cli import main

if __name__ == "__main__":
    sys.exit(main(Kind.EMBEDDING))
