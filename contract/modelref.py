"""Model references: what may name a model, checked before any worker sees it.

A reference is either a Hugging Face repo id (`org/name`) or a directory under one of the
model roots (a bare name, or a path inside a root). Everything else is refused: URLs, `..`,
absolute paths outside the roots, symlinks that escape a root, odd characters. Messages
never echo server paths.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from contract.keys import Kind
from contract.progress import on_terminal

log = logging.getLogger("mis.models")

MAX_REF_LENGTH = 256
MAX_PART_LENGTH = 255
"""Characters per path part: what file systems allow (a longer name is no model, anywhere)."""
UNFINISHED_SUFFIXES = (".partial", ".old")
"""Directories the GGUF importer is still writing or about to delete."""
_SAFE_CHARS = re.compile(r"^[A-Za-z0-9._\-/]+$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,95}/[A-Za-z0-9][A-Za-z0-9._\-]{0,95}$")


class InvalidModelRef(ValueError):
    """A reference that names no allowed model; the message is safe to show a client."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    """The canonical model id: a local model's path relative to its root, normalized
    (`./X`, `X/`, `.//X` and `/root/X` are all `X`), or the Hugging Face repo id. Queues,
    workers, autoload and the registry only ever see this name, so one model is one model
    however a client spells it, and no server path is ever shown."""
    local_path: Path | None = None
    """Set for a directory under a model root."""
    repo_id: str | None = None
    """Set for a Hugging Face repo id."""


def parse_model_ref(ref: str, roots: list[Path]) -> ModelRef:
    _check_shape(ref)
    found = _find_under_roots(ref, roots)
    if found is not None:
        local, name = found
        return ModelRef(name=name, local_path=local)
    if _HUB_ID.match(ref) and not ref.startswith("/"):
        return ModelRef(name=ref, repo_id=ref)
    raise InvalidModelRef(
        f"model {ref!r} is neither a model directory under the model roots nor a Hugging Face repo id (org/name)"
    )


def check_length(ref: str) -> None:
    """The one length rule for model names, wherever one arrives (chat, documents, batch
    lines, admin): 1 to MAX_REF_LENGTH characters, no part longer than a file name may be."""
    if not ref or len(ref) > MAX_REF_LENGTH:
        raise InvalidModelRef(f"a model reference must be 1 to {MAX_REF_LENGTH} characters")
    if any(len(part) > MAX_PART_LENGTH for part in ref.split("/")):
        raise InvalidModelRef(f"each part of a model reference must be at most {MAX_PART_LENGTH} characters")


def _check_shape(ref: str) -> None:
    check_length(ref)
    if "://" in ref or ref.lower().startswith(("http:", "https:", "file:")):
        raise InvalidModelRef("a model reference may not be a URL")
    if not _SAFE_CHARS.match(ref):
        raise InvalidModelRef(f"model reference {ref!r} has characters outside letters, digits, '.', '_', '-', '/'")
    if ".." in ref.split("/"):
        raise InvalidModelRef("a model reference may not contain '..'")

    if ref.endswith(UNFINISHED_SUFFIXES):
        raise InvalidModelRef(f"model {ref!r} is an unfinished or replaced import")


def _find_under_roots(ref: str, roots: list[Path]) -> tuple[Path, str] | None:
    """The resolved directory the reference names inside a root and its canonical name (the
    normalized path relative to the root, symlinks not followed: a symlinked alias stays a
    model id of its own), or None. Symlinks are followed to check they land in the same root."""
    for root in roots:
        root = root.resolve()
        candidate = Path(ref) if ref.startswith("/") else root / ref
        if not candidate.is_dir():
            continue
        resolved = candidate.resolve()
        if resolved != root and resolved.is_relative_to(root):
            return resolved, _relative_name(candidate, root, resolved)
        if not ref.startswith("/"):
            raise InvalidModelRef(f"model {ref!r} points outside the model roots")
    if ref.startswith("/"):
        raise InvalidModelRef("an absolute model path must lie inside the model roots")
    return None


def _relative_name(candidate: Path, root: Path, resolved: Path) -> str:
    normalized = Path(os.path.normpath(candidate))
    if normalized.is_relative_to(root) and normalized != root:
        return normalized.relative_to(root).as_posix()
    return resolved.relative_to(root).as_posix()  # an absolute path through a symlinked root


HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
"""What mlx-lm and mlx-vlm need from a repo; skips other formats (.bin, .gguf, .pth)."""


class ModelLoadError(Exception):
    """The model could not be made ready; the message says why, without server paths."""


def resolve(ref: ModelRef) -> Path:
    """The model's directory: local references as they are, Hugging Face ids through
    `huggingface_hub.snapshot_download`, which honours HF_HUB_OFFLINE and the local cache.
    Workers call it (the API never does, so it needs no huggingface_hub)."""
    if ref.local_path is not None:
        return ref.local_path
    assert ref.repo_id is not None  # parse_model_ref sets one of the two
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    _hub_bars_follow_terminal()
    log.info("fetching %s through huggingface_hub (its local cache first)", ref.repo_id)
    try:
        return Path(snapshot_download(ref.repo_id, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{ref.repo_id} is not in the local Hugging Face cache and the hub cannot be "
            "reached (HF_HUB_OFFLINE is set or there is no network)"
        ) from exc


def _hub_bars_follow_terminal() -> None:
    """huggingface_hub draws its bars whatever stderr is; a worker under a manager writes
    stderr to a log file, which would fill with redrawn frames. Same rule as every other bar
    (contract.progress), unless HF_HUB_DISABLE_PROGRESS_BARS says otherwise: an explicit
    choice wins (the hub would only warn that it cannot be overridden)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None:
        return
    if on_terminal():
        enable_progress_bars()
    else:
        disable_progress_bars()


def guess_kind(ref: ModelRef) -> Kind:
    """A local model with a vision tower is a vision model, a sentence-transformers directory
    an embedding model; anything else is text (a hub model that is not on this machine: say
    `kind=vision` or `kind=embedding` to load one)."""
    if ref.local_path is None:
        return Kind.TEXT
    path = Path(ref.local_path)
    if (path / "modules.json").is_file() or (path / "sentence_bert_config.json").is_file():
        return Kind.EMBEDDING
    try:
        if "vision_config" in json.loads((path / "config.json").read_text()):
            return Kind.VISION
    except (OSError, ValueError):
        pass
    return Kind.TEXT
