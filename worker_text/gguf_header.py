"""The GGUF header: a small pure-Python parser of a GGUF file's metadata and tensor table
(worker_text/gguf.py says why we read it ourselves rather than trust `mx.load`). Bounded
reads: a string, an array or a count larger than any real model's is refused, so a hostile
or corrupt file cannot make the importer allocate without limit."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


class GGUFImportError(Exception):
    """A GGUF file this importer cannot turn into a correct mlx-lm model."""


TYPE_NAMES = dict(
    enumerate(
        [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "-",
            "-",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "-",
            "-",
            "-",
            "TQ1_0",
            "TQ2_0",
            "-",
            "-",
            "-",
            "MXFP4",
        ]
    )
)
"""Names for error messages (ggml's GGMLQuantizationType)."""

_MAX_STRING, _MAX_ARRAY, _MAX_COUNT = 1 << 26, 1 << 24, 1 << 20
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: dims[0] is the innermost (row length)
    type_id: int

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_id, f"type id {self.type_id}")


@dataclass(frozen=True)
class GGUFHeader:
    label: str  # the file's basename: messages never show server paths
    metadata: dict[str, Any]
    tensors: list[TensorInfo]

    def error(self, message: str) -> GGUFImportError:
        return GGUFImportError(f"{self.label}: {message}")

    def get(self, key: str, default: Any = ...) -> Any:
        if key in self.metadata:
            return self.metadata[key]
        if default is ...:
            raise self.error(f"missing metadata {key!r}")
        return default

    def count(self, key: str, default: Any = ...) -> int:
        """A positive integer hyper-parameter (bool is an int in Python, so excluded)."""
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self.error(f"metadata {key!r} is not a positive integer: {value!r}")
        return value


class _HeaderReader:
    """Little-endian reads from the header; a short read means a truncated or corrupt file."""

    def __init__(self, f: BinaryIO, label: str):
        self.f, self.label = f, label

    def corrupt(self, why: str) -> GGUFImportError:
        return GGUFImportError(f"{self.label}: truncated or corrupt GGUF header ({why})")

    def bytes(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.corrupt("unexpected end of file")
        return data

    def scalar(self, fmt: str) -> Any:
        value = struct.unpack("<" + fmt, self.bytes(struct.calcsize(fmt)))[0]
        return _shortest_float32(value) if fmt == "f" else value

    def count(self, limit: int) -> int:
        if (n := self.scalar("Q")) > limit:
            raise self.corrupt(f"count {n}")
        return n

    def string(self) -> str:
        try:
            return self.bytes(self.count(_MAX_STRING)).decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt("bad UTF-8") from None

    def value(self, type_id: int) -> Any:
        if type_id == _STRING:
            return self.string()
        if type_id in _SCALARS:
            return self.scalar(_SCALARS[type_id])
        if type_id == _ARRAY:
            item_type, n = self.scalar("I"), self.count(_MAX_ARRAY)
            if item_type in _SCALARS:  # one unpack for the whole array: token_type is ~50k ints
                fmt = f"<{n}{_SCALARS[item_type]}"
                return list(struct.unpack(fmt, self.bytes(struct.calcsize(fmt))))
            return [self.value(item_type) for _ in range(n)]
        raise self.corrupt(f"value type {type_id}")


def _shortest_float32(x: float) -> float:
    """1e-05 rather than 9.999999747378752e-06 in config.json: the same float32, readable."""
    for digits in range(1, 10):
        short = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == x:
            return short
    return x


def read_header(path: Path) -> GGUFHeader:
    """Parse magic, version, metadata and tensor infos (the data section is not read)."""
    with open(path, "rb") as f:
        r = _HeaderReader(f, path.name)
        if f.read(4) != b"GGUF":
            raise GGUFImportError(f"{path.name}: not a GGUF file")
        version = r.scalar("I")
        if version not in (2, 3):  # v1 used 32-bit counts; a huge number means big-endian
            raise GGUFImportError(f"{path.name}: unsupported GGUF version {version}")
        n_tensors, n_kv = r.count(_MAX_COUNT), r.count(_MAX_COUNT)
        metadata = {r.string(): r.value(r.scalar("I")) for _ in range(n_kv)}
        tensors = []
        for _ in range(n_tensors):
            name, n_dims = r.string(), r.scalar("I")
            if n_dims > 4:  # GGML_MAX_DIMS
                raise r.corrupt(f"{n_dims} dims")
            dims = tuple(r.scalar("Q") for _ in range(n_dims))
            tensors.append(TensorInfo(name, dims, r.scalar("I")))
            r.scalar("Q")  # data offset: mx.load reads the data
    return GGUFHeader(path.name, metadata, tensors)
