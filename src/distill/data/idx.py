"""Reader for the IDX format used by MNIST and Fashion-MNIST (optionally gzip-compressed).

Layout: two zero bytes, a type code (``0x08`` = unsigned byte), the number of dimensions ``d``,
then ``d`` big-endian uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from distill.errors import DataError

__all__ = ["read_idx"]

_UBYTE = 0x08


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions.

    Files whose name ends in ``.gz`` are decompressed. Returns a read-only uint8 array of the
    shape in the header (e.g. ``[N, 28, 28]`` for images, ``[N]`` for labels). Raises
    :class:`DataError` naming the file when it is unreadable, truncated or not such an IDX file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc} (the file is truncated or corrupt)") from exc

    if len(raw) < 4:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than an IDX header")
    zero0, zero1, type_code, dims = raw[0], raw[1], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{path} is not an IDX file: magic number 0x{magic:08x}")
    if type_code != _UBYTE or dims != ndim:
        expected = (_UBYTE << 8) | ndim
        raise DataError(
            f"{path} has magic number 0x{magic:08x}; expected 0x{expected:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim != 1 else ''})"
        )
    header_len = 4 + 4 * dims
    if len(raw) < header_len:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected_len = header_len + math.prod(shape)
    if len(raw) != expected_len:
        problem = "truncated" if len(raw) < expected_len else "corrupt (trailing bytes)"
        raise DataError(
            f"{path} is {problem}: the header promises shape {list(shape)} "
            f"({expected_len} bytes) but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)
