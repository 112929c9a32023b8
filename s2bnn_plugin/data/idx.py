"""A reader for the MNIST ``idx`` file format (plain or gzip-compressed).

Format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number of
dimensions; then each dimension as a big-endian uint32; then the values, big-endian, C order.
The reader checks every part of that against the file's actual length, so a truncated download
or a file of another kind fails with a message naming the file, never with garbage arrays.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from s2bnn_plugin.errors import FileMissing, S2BNNError

__all__ = ["IDX_DTYPES", "IdxFormatError", "read_idx"]

#: idx type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(S2BNNError, ValueError):
    """A file is not a well-formed idx file."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupted gzip stream
        raise IdxFormatError(f"{path}: corrupted or truncated gzip data ({e})") from e


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read an idx file (``.gz`` detected from its content) into a native-endian array.

    ``ndim``: the number of dimensions the caller expects (e.g. 3 for images, 1 for labels);
    checked so that swapping an images file for a labels file is an error, not a silent bug.
    Raises :class:`FileNotFoundError` for a missing file and :class:`IdxFormatError` (a
    ``ValueError``) for a malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileMissing(f"idx file not found: {path}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes, too short for an idx header")
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{data[:4].hex()} (an idx file starts with two zero "
            "bytes, a type code and the number of dimensions)"
        )
    code, n_dims = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IdxFormatError(f"{path}: unknown idx type code 0x{code:02X} (known: {known})")
    if n_dims == 0:
        raise IdxFormatError(f"{path}: idx header declares 0 dimensions")
    if ndim is not None and n_dims != ndim:
        raise IdxFormatError(f"{path}: expected a {ndim}-d idx array, the file holds {n_dims}-d")
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=n_dims, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxFormatError(
            f"{path}: shape {shape} of {dtype.name} needs {expected} bytes, the file has "
            f"{len(data)} ({'truncated' if len(data) < expected else 'trailing data'})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
