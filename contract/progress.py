"""Progress for long steps: a bar when a person watches, one plain line when nobody does.

Why one rule in one place: a tqdm bar redraws itself with carriage returns, which reads well
on a terminal and badly everywhere else — CI logs, pytest's captured output, honcho's
prefixed lines, a worker's log file fill with hundreds of half-drawn frames. So every long
step (importing the default models: `worker_text.models`, `worker_embedding.models`; Hugging
Face downloads: `contract.modelref`) asks `on_terminal()`: stderr a TTY means bars, anything
else one line saying what is happening. tqdm is imported only when a bar is drawn, so this
module keeps contract/ free of dependencies beyond the standard library.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Protocol

__all__ = ["Progress", "copy_stream", "on_terminal", "progress_bar"]

CHUNK = 1 << 20
"""Bytes per read when copying: large enough to be fast, small enough for a smooth bar."""


def on_terminal(stream: IO[str] | None = None) -> bool:
    """Whether `stream` (default: stderr, where bars are drawn) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


class Progress(Protocol):
    """What callers use of a bar; tqdm has it, and so has the one-line stand-in."""

    def update(self, n: float = 1) -> Any: ...
    def close(self) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> Any: ...


class _Line:
    """Off a terminal: one line when the step starts, nothing per update."""

    def __init__(self, desc: str, total: float | None, unit: str, stream: IO[str] | None) -> None:
        stream = stream if stream is not None else sys.stderr
        stream.write(f"{desc}: {_amount(total, unit)}…\n" if total else f"{desc}…\n")
        stream.flush()

    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Line:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Silent(_Line):
    """`enabled=False` (a --quiet flag, a test): neither bar nor line."""

    def __init__(self) -> None:
        pass


def progress_bar(
    desc: str, total: float | None, unit: str = "B", *, enabled: bool = True, stream: IO[str] | None = None
) -> Progress:
    """A bar on a terminal (tqdm; bytes scaled to kB/MB/GB when `unit` is "B"), else one line.
    Use it as a context manager and call `update(n)` as work is done."""
    if not enabled:
        return _Silent()
    if on_terminal(stream):
        try:
            from tqdm import tqdm
        except ImportError:  # a venv without tqdm still gets the line
            pass
        else:
            scaled = unit == "B"
            return tqdm(desc=desc, total=total, unit=unit, unit_scale=scaled, unit_divisor=1024, file=stream)
    return _Line(desc, total, unit, stream)


def copy_stream(src: IO[bytes], dst: IO[bytes], bar: Progress) -> int:
    """shutil.copyfileobj, advancing `bar` by the bytes written; returns the bytes copied."""
    copied = 0
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        copied += len(chunk)
        bar.update(len(chunk))
    return copied


def _amount(total: float, unit: str) -> str:
    if unit != "B":
        return f"{total:g} {unit}{'' if total == 1 else 's'}"
    for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if total >= scale:
            return f"{total / scale:.1f} {name}"
    return f"{total:g} bytes"
