"""Failure reasons fit to show a client: one line, server paths cut to their last part."""

from __future__ import annotations

import os
import re

_ABSOLUTE_PATH = re.compile(r"(?:/[\w.@+-]+){2,}/?")


def safe_reason(exc: BaseException) -> str:
    """The exception as one line for the registry, /health, /admin and 503s: server paths are
    cut down to their last part (they mean nothing to a client and say too much)."""
    return f"{type(exc).__name__}: {safe_text(str(exc)) or 'no details'}"[:500]


def safe_text(text: str) -> str:
    """A message (say, the last line of a traceback) with server paths cut the same way."""
    return _ABSOLUTE_PATH.sub(lambda m: os.path.basename(m.group().rstrip("/")), text)[:500]
