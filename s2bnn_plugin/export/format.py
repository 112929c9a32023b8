"""The packed file: one zip (``.npz``-style) holding a JSON layer specification and arrays.

Why a zip of ``.npy`` members: numpy reads it with ``allow_pickle=False`` (no code runs on load),
every member carries a CRC-32 (corruption is detected), and any language with a zip reader can
parse it. Layout:

- ``__spec__.npy``: the specification, UTF-8 JSON bytes (uint8). Keys: ``format``
  (``"s2bnn-packed"``), ``format_version``, ``backbone`` (``name``, ``kwargs``), ``in_channels``,
  ``num_features``, ``stem`` and ``units`` (see :func:`expected_arrays`).
- ``stem.weight`` (cin, k, k, cout) float32, ``stem.affine`` (2, cout): BatchNorm ``y * a + b``.
- per binary unit ``i``: ``units.i.weight`` uint64 (the kernels' block layout), ``units.i.rsign``
  (groups, cin) float32 input shifts, ``units.i.affine`` (3, cout): weight scale and BatchNorm;
  ``units.i.activation`` (3, cout): RPReLU shift, slope, shift; ``units.i.proj_weight``
  (cin, cout) and ``units.i.proj_affine`` (2, cout) for a projection shortcut.

Everything read is checked against the specification (names, dtypes, shapes, padding bits) before
any compiled code can see it: a truncated, corrupted or newer-version file raises
:class:`PackedFormatError`, never a crash.

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

from s2bnn_plugin.errors import FileMissing, S2BNNError
from s2bnn_plugin.files import PARTIAL_PATTERN, atomic_open, is_partial

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PackedFormatError",
    "expected_arrays",
    "read_packed",
    "validate",
    "write_packed",
]

FORMAT = "s2bnn-packed"
FORMAT_VERSION = 1
SPEC_KEY = "__spec__"
LANES = 32  # must equal s2bnn_plugin.kernels.LANES (checked by the tests, kept import-free here)
RESIDUALS = ("identity", "avgpool", "projection")
MAX_CHANNELS = 1 << 16
MAX_SPEC_BYTES = 1 << 20  # the JSON of ReActNet-A (26 units) is 4.4 kB
MAX_ARRAY_BYTES = 1 << 30  # all arrays a specification may imply (1 GiB)
MAX_HEADER_BYTES = 4096  # an .npy header (numpy writes 128 bytes for these arrays)


class PackedFormatError(S2BNNError, ValueError):
    """A packed network file or specification that this version cannot use."""


def _words(channels: int) -> int:
    return (channels + 63) // 64


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise PackedFormatError(message)


def _is_int(v: object) -> bool:
    """A JSON integer: not a bool (``true == 1``) nor a float (``3.0 == 3``)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _int(d: dict, key: str, where: str, lo: int, hi: int) -> int:
    v = d.get(key)
    _need(
        _is_int(v) and lo <= v <= hi,
        f"{where}: '{key}' must be an integer in [{lo}, {hi}], got {v!r}",
    )
    return v


def _choice(d: dict, key: str, where: str, choices: tuple[int, ...]) -> int:
    v = d.get(key)
    allowed = " or ".join(map(str, choices))
    _need(_is_int(v) and v in choices, f"{where}: '{key}' must be the integer {allowed}, got {v!r}")
    return v


def unit_shapes(unit: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Array suffixes, shapes and dtypes a (validated) unit owns."""
    k, cin, g, cg = unit["kernel"], unit["in_channels"], unit["groups"], unit["group_channels"]
    cout = g * cg
    blocks = g * ((cg + LANES - 1) // LANES)
    f32 = np.dtype(np.float32)
    shapes = {
        "weight": ((blocks * k * k * _words(cin) * LANES,), np.dtype(np.uint64)),
        "rsign": ((g, cin), f32),
        "affine": ((3, cout), f32),
    }
    if unit["activation"]:
        shapes["activation"] = ((3, cout), f32)
    if unit["residual"] == "projection":
        shapes["proj_weight"] = ((cin, cout), f32)
        shapes["proj_affine"] = ((2, cout), f32)
    return shapes


def validate(spec: Any) -> dict:
    """Check a specification's structure and consistency; returns it. Raises PackedFormatError."""
    _need(isinstance(spec, dict), "the specification is not a JSON object")
    _need(
        spec.get("format") == FORMAT,
        f"not an s2bnn packed network (format {spec.get('format')!r}, expected {FORMAT!r})",
    )
    version = spec.get("format_version")
    _need(_is_int(version) and version >= 1, f"invalid format_version {version!r}")
    _need(
        version <= FORMAT_VERSION,
        f"this file has format version {version}, written by a newer s2bnn-plugin; this version "
        f"reads format versions up to {FORMAT_VERSION} (upgrade s2bnn-plugin)",
    )
    backbone = spec.get("backbone")
    _need(
        isinstance(backbone, dict)
        and isinstance(backbone.get("name"), str)
        and isinstance(backbone.get("kwargs"), dict),
        "'backbone' must be an object with a string 'name' and an object 'kwargs'",
    )
    _int(spec, "in_channels", "spec", 1, MAX_CHANNELS)
    stem = spec.get("stem")
    _need(isinstance(stem, dict), "'stem' must be an object")
    k = _int(stem, "kernel", "stem", 1, 15)
    _int(stem, "stride", "stem", 1, 8)
    _int(stem, "padding", "stem", 0, k)
    channels = _int(stem, "out_channels", "stem", 1, MAX_CHANNELS)
    _need(isinstance(stem.get("maxpool"), bool), "stem: 'maxpool' must be true or false")
    units = spec.get("units")
    _need(isinstance(units, list) and len(units) >= 1, "'units' must be a non-empty list")
    for i, unit in enumerate(units):
        where = f"unit {i}"
        _need(isinstance(unit, dict), f"{where} must be an object")
        _need(
            isinstance(unit.get("name"), str),
            f"unit {i}: 'name' must be a string (the layer's path), got {unit.get('name')!r}",
        )
        where = f"unit {i} ({unit['name']})"
        _choice(unit, "kernel", where, (1, 3))
        stride = _choice(unit, "stride", where, (1, 2))
        ucin = _int(unit, "in_channels", where, 1, MAX_CHANNELS)
        _need(ucin == channels, f"{where}: in_channels {ucin} != previous output {channels}")
        groups = _int(unit, "groups", where, 1, 8)
        cg = _int(unit, "group_channels", where, 1, MAX_CHANNELS)
        _need(isinstance(unit.get("activation"), bool), f"{where}: 'activation' must be bool")
        residual = unit.get("residual")
        _need(residual in RESIDUALS, f"{where}: 'residual' must be one of {RESIDUALS}")
        if residual == "identity":
            _need(
                stride == 1 and ucin == cg,
                f"{where}: an identity residual needs stride 1 and in_channels == group_channels",
            )
        elif residual == "avgpool":
            _need(
                stride == 2 and ucin == cg,
                f"{where}: an avgpool residual needs stride 2 and in_channels == group_channels",
            )
        else:
            _need(groups == 1, f"{where}: a projection residual needs groups == 1")
        channels = groups * cg
    features = _int(spec, "num_features", "spec", 1, MAX_CHANNELS * 8)
    _need(features == channels, f"num_features {features} != last unit's channels {channels}")
    return spec


def expected_arrays(spec: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every array name a validated specification needs, with its shape and dtype."""
    stem = spec["stem"]
    k, cout = stem["kernel"], stem["out_channels"]
    f32 = np.dtype(np.float32)
    out = {
        "stem.weight": ((spec["in_channels"], k, k, cout), f32),
        "stem.affine": ((2, cout), f32),
    }
    for i, unit in enumerate(spec["units"]):
        for suffix, shape in unit_shapes(unit).items():
            out[f"units.{i}.{suffix}"] = shape
    return out


def _check_padding_bits(spec: dict, arrays: dict[str, np.ndarray]) -> None:
    """Bits past in_channels and lanes past group_channels must be zero (they would count)."""
    for i, unit in enumerate(spec["units"]):
        k, cin, g, cg = unit["kernel"], unit["in_channels"], unit["groups"], unit["group_channels"]
        bpg = (cg + LANES - 1) // LANES
        wt = arrays[f"units.{i}.weight"].reshape(g, bpg, k * k, _words(cin), LANES)
        if cin % 64:
            mask = np.uint64((1 << (cin % 64)) - 1)
            _need(
                not np.any(wt[..., -1, :] & ~mask),
                f"unit {i}: weight bits set past in_channels (corrupted file?)",
            )
        if cg % LANES:
            _need(
                not np.any(wt[:, -1, :, :, cg % LANES :]),
                f"unit {i}: weights set in padding lanes (corrupted file?)",
            )


def check_arrays(spec: dict, arrays: dict[str, np.ndarray]) -> None:
    """Names, dtypes and shapes of ``arrays`` against a validated specification."""
    expected = expected_arrays(spec)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    _need(not missing, f"arrays missing from the file: {missing[:5]}")
    _need(not extra, f"unexpected arrays in the file: {extra[:5]}")
    for name, (shape, dtype) in expected.items():
        a = arrays[name]
        _need(
            isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape,
            f"array {name!r}: expected {dtype} {shape}, got "
            f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}",
        )
    _check_padding_bits(spec, arrays)
    for i in range(len(spec["units"])):
        name = f"units.{i}.rsign"
        _need(
            bool(np.isfinite(arrays[name]).all()),
            f"array {name!r} (unit {i}'s sign thresholds) holds NaN or infinity: the model's "
            "RSign shifts are broken; fix or retrain the model and pack it again",
        )


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
    _need(
        info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED),
        f"member {name!r} uses zip compression method {info.compress_type}; packed files hold "
        "stored or deflated members",
    )
    most = nbytes + MAX_HEADER_BYTES
    _need(
        info.file_size <= most,
        f"member {name!r} declares {info.file_size} bytes, more than the {most} its array "
        "needs (corrupted or tampered file?)",
    )
    # deflate expands incompressible data by at most 5 bytes per 16 kB block
    packed_most = info.file_size + info.file_size // 1000 + 1024
    _need(
        info.compress_size <= packed_most,
        f"member {name!r} declares {info.compress_size} compressed bytes for {info.file_size} "
        "bytes of data (corrupted or tampered file?)",
    )


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple[int, ...] | None
) -> np.ndarray:
    """One ``.npy`` member: its header checked against ``dtype`` and ``shape`` (``None``: any
    1-d shape) before its data is read into an array of exactly that size."""
    name = info.filename
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        _need(version in ((1, 0), (2, 0)), f"member {name!r}: .npy format {version} unsupported")
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        got_shape, fortran, got_dtype = read_header(f, max_header_size=MAX_HEADER_BYTES)
        want = shape if shape is not None else got_shape
        _need(
            got_dtype == dtype and (got_shape == shape if shape else len(got_shape) == 1),
            f"array {name.removesuffix('.npy')!r}: expected {dtype} {shape or '(n,)'}, got "
            f"{got_dtype} {got_shape}",
        )
        nbytes = _nbytes(want, dtype)
        _need(
            info.file_size == f.tell() + nbytes,
            f"member {name!r} declares {info.file_size} bytes, its .npy header "
            f"{f.tell() + nbytes} (corrupted file?)",
        )
        out = np.empty(want[::-1] if fortran else want, dtype)
        view = memoryview(out).cast("B")
        done = 0
        while done < nbytes:
            n = f.readinto(view[done:])
            _need(n > 0, f"member {name!r} ends early (truncated file?)")
            done += n
        _need(not f.read(1), f"member {name!r} holds more data than its header says")
    return np.ascontiguousarray(out.T) if fortran else out


def _read_zip(zf: zipfile.ZipFile) -> tuple[dict, dict[str, np.ndarray]]:
    """The specification and arrays of an open packed file, checked in the order that keeps the
    memory bounded: the directory, then the specification, then each array's header and data."""
    infos = zf.infolist()
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        _need(info.filename not in members, f"member {info.filename!r} appears twice")
        members[info.filename] = info
    spec_info = members.get(SPEC_KEY + ".npy")
    _need(spec_info is not None, "no specification member (not a packed network file)")
    _need(
        spec_info.file_size <= MAX_SPEC_BYTES + MAX_HEADER_BYTES,
        f"the specification member declares {spec_info.file_size} bytes, more than "
        f"{MAX_SPEC_BYTES} (not a packed network file?)",
    )
    _check_declared_size(spec_info, spec_info.file_size)
    raw = _read_member(zf, spec_info, np.dtype(np.uint8), None)
    spec = validate(json.loads(raw.tobytes().decode("utf-8")))
    expected = expected_arrays(spec)
    total = sum(_nbytes(shape, dtype) for shape, dtype in expected.values())
    _need(
        total <= MAX_ARRAY_BYTES,
        f"the specification implies {total} bytes of arrays, more than this version reads "
        f"({MAX_ARRAY_BYTES})",
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
    _need(not missing, f"arrays missing from the file: {missing[:5]}")
    _need(
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
    return spec, arrays


def read_packed(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
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
            spec, arrays = _read_zip(zf)
    except PackedFormatError as e:
        raise PackedFormatError(f"{path}: {e}") from None
    except Exception as e:  # zip, npy-header, CRC, JSON and unicode errors: all "unreadable"
        raise PackedFormatError(
            f"{path}: not a readable s2bnn packed network (truncated or corrupted?): "
            f"{type(e).__name__}: {e}"
        ) from e
    try:
        check_arrays(spec, arrays)
    except PackedFormatError as e:
        raise PackedFormatError(f"{path}: {e}") from None
    return spec, arrays
