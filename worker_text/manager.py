"""`python -m worker_text.manager [--preload MODEL]`: starts and supervises this machine's
text workers, taking load commands from Redis (see jobs/manager.py)."""
from __future__ import annotations

import sys

from jobs.keys import Kind
from jobs.manager import main

if __name__ == "__main__":
    sys.exit(main(Kind.TEXT))
