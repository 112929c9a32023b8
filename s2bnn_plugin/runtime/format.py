"""The packed file: one zip (``.npz``-style) holding a JSON layer specification and arrays.

Why a zip of ``.npy`` members: numpy reads it with ``allow_pickle=False`` (no code runs on load),
every member carries a CRC-32 (corruption is detected), and any language with a zip reader can
parse it. Layout:

- ``__spec__.npy``: the specification, UTF-8 JSON bytes (uint8). Keys: ``format``
  (``"s2bnn-packed"``), ``format_version``, ``backbone`` (``name``, ``kwargs``), ``in_channels``,
  ``num_features``, ``stem`` (``kernel``, ``stride``, ``padding``, ``out_channels``,
  ``maxpool``, ``name``) and ``units``: one object per binary unit, its ``kind`` (a registered
  unit kind, :mod:`s2bnn_plugin.runtime.units`; ``"binary_conv"``, the residual binary
  convolution: :mod:`~s2bnn_plugin.runtime.units.binary_conv`) and the fields its kind reads.
- ``stem.weight`` (cin, k, k, cout) float32, ``stem.affine`` (2, cout): BatchNorm ``y * a + b``.
- per binary unit ``i``: its arrays ``units.i.<name>``, as its kind declares them (a binary
  convolution: ``weight``, ``rsign``, ``affine``, ``activation``, ``proj_weight``,
  ``proj_affine``).

Versions: 2 (written) gives every unit its ``kind``; 1 (still read) has no ``kind``, every unit
is a binary convolution, and is otherwise the same.

This module is the only code that sees the specification as JSON: :func:`parse_spec` turns it
into the typed layout (:class:`~s2bnn_plugin.runtime.model.NetworkLayout`), checking every
field, and :func:`spec_of` writes it back. Everything read is checked against the specification
(names, dtypes, shapes, padding bits) before any compiled code can see it: a truncated,
corrupted or newer-version file raises :class:`PackedFormatError`, never a crash.

Reading takes bounded memory: the member names and the sizes the zip directory declares are
checked first, then each member's ``.npy`` header (dtype, shape), and only then its data, read
into an array of exactly the size the specification implies. The specification member is at most
:data:`MAX_SPEC_BYTES`, and a specification may imply at most :data:`MAX_ARRAY_BYTES` of arrays
(ReActNet-A at width 1 holds 3.8 MB). An unexpected member, or one that declares more
bytes than its array needs, is refused by name before a byte of it is decompressed.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.errors import FileMissing
from s2bnn_plugin.files import PARTIAL_PATTERN, atomic_open, is_partial
from s2bnn_plugin.memory import MemoryLimitError, require_memory
from s2bnn_plugin.runtime.model import BackboneRef, NetworkLayout, PackedModel, StemLayout
from s2bnn_plugin.runtime.spec import (
    MAX_CHANNELS,
    PackedFormatError,
    is_int,
    need,
    spec_bool,
    spec_int,
)
from s2bnn_plugin.runtime.units import DEFAULT_KIND, unit_kind

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PackedFormatError",
    "check_model",
    "parse_spec",
    "read_packed",
    "spec_of",
    "write_packed",
]

FORMAT = "s2bnn-packed"
FORMAT_VERSION = 2
KINDS_SINCE = 2  # the first format version whose units name their kind
SPEC_KEY = "__spec__"
MAX_SPEC_BYTES = 1 << 20  # the JSON of ReActNet-A (26 units) is 4.4 kB
MAX_ARRAY_BYTES = 1 << 30  # all arrays a specification may imply (1 GiB)
MAX_HEADER_BYTES = 4096  # an .npy header (numpy writes 128 bytes for these arrays)
DEFLATE_MOST = 1032  # deflate's largest expansion: at most this many bytes out per byte in


def _parse_stem(stem: Any) -> StemLayout:
    need(isinstance(stem, dict), "'stem' must be an object")
    k = spec_int(stem, "kernel", "stem", 1, 15)
    stride = spec_int(stem, "stride", "stem", 1, 8)
    padding = spec_int(stem, "padding", "stem", 0, k)
    channels = spec_int(stem, "out_channels", "stem", 1, MAX_CHANNELS)
    maxpool = spec_bool(stem, "maxpool", "stem: 'maxpool' must be true or false")
    name = stem.get("name", "stem")
    need(isinstance(name, str), f"stem: 'name' must be a string, got {name!r}")
    return StemLayout(k, stride, padding, channels, maxpool, name)


def parse_spec(spec: Any) -> NetworkLayout:
    """The typed layout of a specification (parsed JSON), every field and the chain of units
    checked; raises :class:`PackedFormatError` naming the field."""
    need(isinstance(spec, dict), "the specification is not a JSON object")
    need(
        spec.get("format") == FORMAT,
        f"not an s2bnn packed network (format {spec.get('format')!r}, expected {FORMAT!r})",
    )
    version = spec.get("format_version")
    need(is_int(version) and version >= 1, f"invalid format_version {version!r}")
    need(
        version <= FORMAT_VERSION,
        f"this file has format version {version}, written by a newer s2bnn-plugin; this version "
        f"reads format versions up to {FORMAT_VERSION} (upgrade s2bnn-plugin)",
    )
    backbone = spec.get("backbone")
    need(
        isinstance(backbone, dict)
        and isinstance(backbone.get("name"), str)
        and isinstance(backbone.get("kwargs"), dict),
        "'backbone' must be an object with a string 'name' and an object 'kwargs'",
    )
    in_channels = spec_int(spec, "in_channels", "spec", 1, MAX_CHANNELS)
    stem = _parse_stem(spec.get("stem"))
    channels = stem.out_channels
    entries = spec.get("units")
    need(isinstance(entries, list) and len(entries) >= 1, "'units' must be a non-empty list")
    units = []
    for i, entry in enumerate(entries):
        need(isinstance(entry, dict), f"unit {i} must be an object")
        need(
            isinstance(entry.get("name"), str),
            f"unit {i}: 'name' must be a string (the layer's path), got {entry.get('name')!r}",
        )
        where = f"unit {i} ({entry['name']})"
        kind = entry.get("kind") if version >= KINDS_SINCE else DEFAULT_KIND
        unit = unit_kind(kind, where).parse(entry, where)
        need(
            unit.in_channels == channels,
            f"{where}: in_channels {unit.in_channels} != previous output {channels}",
        )
        units.append(unit)
        channels = unit.out_channels
    features = spec_int(spec, "num_features", "spec", 1, MAX_CHANNELS * 8)
    need(features == channels, f"num_features {features} != last unit's channels {channels}")
    return NetworkLayout(
        backbone=BackboneRef(backbone["name"], dict(backbone["kwargs"])),
        in_channels=in_channels,
        num_features=features,
        stem=stem,
        units=tuple(units),
    )


def spec_of(layout: NetworkLayout) -> dict[str, Any]:
    """The specification (JSON-ready) of a network, as a file stores it."""
    stem = layout.stem
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": {"name": layout.backbone.name, "kwargs": dict(layout.backbone.kwargs)},
        "in_channels": layout.in_channels,
        "num_features": layout.num_features,
        "stem": {
            "kernel": stem.kernel,
            "stride": stem.stride,
            "padding": stem.padding,
            "out_channels": stem.out_channels,
            "maxpool": stem.maxpool,
            "name": stem.name,
        },
        "units": [{"kind": unit.kind, **unit.to_entry()} for unit in layout.units],
    }


def check_model(model: PackedModel) -> PackedModel:
    """``model`` checked as a file of it would be when read (its specification and arrays);
    returns the checked model. Raises :class:`PackedFormatError`."""
    return PackedModel.from_arrays(parse_spec(spec_of(model)), model.named_arrays())


def write_packed(
    path: str | os.PathLike, spec: dict, arrays: dict[str, np.ndarray], *, force: bool = False
) -> Path:
    """Write atomically (:func:`s2bnn_plugin.files.atomic_file`: a temporary file, flushed to
    disk, then moved into place): a crash never leaves half a file; an existing file or link
    is replaced only with ``force``, a folder never. The file gets the permissions any new file
    of the user gets (0666 less the umask)."""
    path = Path(path)
    blob = np.frombuffer(json.dumps(spec, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    with atomic_open(path, force=force, what="saving the packed network") as f:
        np.savez(f, **{SPEC_KEY: blob}, **arrays)
    return path


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _check_declared_size(info: zipfile.ZipInfo, nbytes: int) -> None:
    """The sizes the zip directory declares for a member holding ``nbytes`` of array data."""
    name = info.filename
    need(
        info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED),
        f"member {name!r} uses zip compression method {info.compress_type}; packed files hold "
        "stored or deflated members",
    )
    most = nbytes + MAX_HEADER_BYTES
    need(
        info.file_size <= most,
        f"member {name!r} declares {info.file_size} bytes, more than the {most} its array "
        "needs (corrupted or tampered file?)",
    )
    # deflate expands incompressible data by at most 5 bytes per 16 kB block
    packed_most = info.file_size + info.file_size // 1000 + 1024
    need(
        info.compress_size <= packed_most,
        f"member {name!r} declares {info.compress_size} compressed bytes for {info.file_size} "
        "bytes of data (corrupted or tampered file?)",
    )
    # what its data holds, before an array of the declared size is allocated for it
    need(
        info.compress_type != zipfile.ZIP_STORED or info.compress_size == info.file_size,
        f"member {name!r} holds {info.compress_size} bytes and declares {info.file_size} "
        "(truncated or tampered file?)",
    )
    need(
        info.compress_type != zipfile.ZIP_DEFLATED
        or info.file_size <= DEFLATE_MOST * info.compress_size + 1024,
        f"member {name!r} declares {info.file_size} bytes in {info.compress_size} compressed "
        "bytes, more than deflate can hold (truncated or tampered file?)",
    )


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple[int, ...] | None
) -> np.ndarray:
    """One ``.npy`` member: its header checked against ``dtype`` and ``shape`` (``None``: any
    1-d shape) before its data is read into an array of exactly that size."""
    name = info.filename
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        need(version in ((1, 0), (2, 0)), f"member {name!r}: .npy format {version} unsupported")
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        got_shape, fortran, got_dtype = read_header(f, max_header_size=MAX_HEADER_BYTES)
        want = shape if shape is not None else got_shape
        need(
            got_dtype == dtype and (got_shape == shape if shape else len(got_shape) == 1),
            f"array {name.removesuffix('.npy')!r}: expected {dtype} {shape or '(n,)'}, got "
            f"{got_dtype} {got_shape}",
        )
        nbytes = _nbytes(want, dtype)
        need(
            info.file_size == f.tell() + nbytes,
            f"member {name!r} declares {info.file_size} bytes, its .npy header "
            f"{f.tell() + nbytes} (corrupted file?)",
        )
        out = np.empty(want[::-1] if fortran else want, dtype)
        view = memoryview(out).cast("B")
        done = 0
        while done < nbytes:
            n = f.readinto(view[done:])
            need(n > 0, f"member {name!r} ends early (truncated file?)")
            done += n
        need(not f.read(1), f"member {name!r} holds more data than its header says")
    return np.ascontiguousarray(out.T) if fortran else out


def _read_zip(zf: zipfile.ZipFile) -> tuple[NetworkLayout, dict[str, np.ndarray]]:
    """The specification and arrays of an open packed file, checked in the order that keeps the
    memory bounded: the directory, then the specification, then each array's header and data."""
    infos = zf.infolist()
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        need(info.filename not in members, f"member {info.filename!r} appears twice")
        members[info.filename] = info
    spec_info = members.get(SPEC_KEY + ".npy")
    need(spec_info is not None, "no specification member (not a packed network file)")
    need(
        spec_info.file_size <= MAX_SPEC_BYTES + MAX_HEADER_BYTES,
        f"the specification member declares {spec_info.file_size} bytes, more than "
        f"{MAX_SPEC_BYTES} (not a packed network file?)",
    )
    _check_declared_size(spec_info, spec_info.file_size)
    raw = _read_member(zf, spec_info, np.dtype(np.uint8), None)
    layout = parse_spec(json.loads(raw.tobytes().decode("utf-8")))
    expected = layout.array_specs()
    total = sum(_nbytes(shape, dtype) for shape, dtype in expected.values())
    need(
        total <= MAX_ARRAY_BYTES,
        f"the specification implies {total} bytes of arrays, more than this version reads "
        f"({MAX_ARRAY_BYTES})",
    )
    require_memory(
        total + layout.prepared_bytes, "its arrays (as read, and in the kernels' layouts)"
    )
    present: dict[str, zipfile.ZipInfo] = {}
    extra: list[str] = []
    for name, info in members.items():
        key = name.removesuffix(".npy")
        if info is spec_info:
            continue
        if key in expected and name.endswith(".npy"):
            present[key] = info
        else:
            extra.append(name)
    missing = sorted(set(expected) - set(present))
    need(not missing, f"arrays missing from the file: {missing[:5]}")
    need(
        not extra,
        f"unexpected members in the file: {sorted(extra)[:5]} (not part of the network its "
        "specification describes; nothing of them was read)",
    )
    for name, (shape, dtype) in expected.items():
        _check_declared_size(present[name], _nbytes(shape, dtype))
    arrays = {
        name: _read_member(zf, present[name], dtype, shape)
        for name, (shape, dtype) in expected.items()
    }
    return layout, arrays


def read_packed(path: str | os.PathLike) -> PackedModel:
    """Read and fully validate a packed file, in bounded memory (see the module's docstring).
    Raises PackedFormatError (or FileMissing)."""
    path = Path(path)
    if not path.is_file():
        raise FileMissing(f"no packed network file at {path}")
    if is_partial(path):
        raise PackedFormatError(
            f"{path} is the temporary of a save that was killed (named {PARTIAL_PATTERN}), not "
            "a packed network; delete it and pack the model again"
        )
    try:
        with path.open("rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise PackedFormatError("a single .npy array, not a packed network (a zip)")
        with zipfile.ZipFile(path) as zf:
            layout, arrays = _read_zip(zf)
    except PackedFormatError as e:
        raise PackedFormatError(f"{path}: {e}") from None
    except MemoryLimitError as e:
        raise MemoryLimitError(f"{path}: {e}") from None
    except Exception as e:  # zip, npy-header, CRC, JSON and unicode errors: all "unreadable"
        raise PackedFormatError(
            f"{path}: not a readable s2bnn packed network (truncated or corrupted?): "
            f"{type(e).__name__}: {e}"
        ) from e
    try:
        return PackedModel.from_arrays(layout, arrays)
    except PackedFormatError as e:
        raise PackedFormatError(f"{path}: {e}") from None
