"""Popcounts counted in bytes or nibbles, and the carry-save adders that feed them: LLVM-level
building blocks for the tap loops of CPUs without a 64-bit vector popcount (:mod:`.taps`).

Without AVX-512 VPOPCNTDQ a vector popcount is per byte (``vpshufb`` nibble lookups on x86,
``cnt`` on aarch64); summing each 64-bit lane's bytes after every step costs one more instruction
per vector. So the tap loops add byte counts in bytes, up to 31 steps (8 x 31 < 256), and widen
them to 64-bit (or 32-bit) lane sums once (:func:`vwiden_add`). Carry-save adders (Harley-Seal:
:func:`vand`, :func:`vor`, :func:`vxor`) reduce four inputs to one before the byte popcount.
:func:`vcount_nibbles` counts inputs already split into nibbles: one ``vpshufb`` per 32 nibbles
and nothing else.

The vectors are :data:`.simd.I64x8` (eight 64-bit lanes: 8 output channels of a wide layer) and
:data:`.simd.I32x16` (sixteen 32-bit lanes: 16 channels of a layer of at most 32 input
channels); LLVM splits them over two ymm registers with AVX2, four with NEON.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import I32x16, I64x8
from .variants import target

__all__ = [
    "as_i32x16",
    "as_i64x8",
    "vand",
    "vbxor",
    "vbxor32",
    "vcount_bytes",
    "vcount_bytes32",
    "vcount_nibbles",
    "vor",
    "vwiden32_add",
    "vwiden_add",
    "vxor",
]

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_BYTES = ir.VectorType(_I8, 64)
_VEC = ir.VectorType(_I64, 8)
_VEC32 = ir.VectorType(_I32, 16)


def _splat(builder, value, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vty.count), None)
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)


@intrinsic
def vbxor(typingctx, a, w):
    """``broadcast(a) ^ w``: one 64-bit activation word against 8 channels' weight words."""
    if w != I64x8 or not isinstance(a, types.Integer) or a.bitwidth != 64:
        return None

    def codegen(context, builder, sig, args):
        return builder.xor(_splat(builder, args[0], _VEC), args[1])

    return I64x8(a, w), codegen


@intrinsic
def vbxor32(typingctx, a, w):
    """``broadcast(low 32 bits of a) ^ w`` on 16 lanes of 32 bits."""
    if w != I32x16 or not isinstance(a, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        low = builder.trunc(args[0], _I32) if args[0].type.width > 32 else args[0]
        return builder.xor(_splat(builder, low, _VEC32), args[1])

    return I32x16(a, w), codegen


def _bitwise(op: str, doc: str):
    @intrinsic
    def fn(typingctx, a, b):
        if a != I64x8 or b != I64x8:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return I64x8(a, b), codegen

    fn.__doc__ = doc
    return fn


vxor = _bitwise("xor", "Lane-wise ``a ^ b``.")
vand = _bitwise("and_", "Lane-wise ``a & b``.")
vor = _bitwise("or_", "Lane-wise ``a | b``.")


def _count_bytes(vec_type):
    @intrinsic
    def fn(typingctx, acc, x):
        if acc != vec_type or x != vec_type:
            return None

        def codegen(context, builder, sig, args):
            ctpop = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_BYTES, [_BYTES]), "llvm.ctpop.v64i8"
            )
            counts = builder.call(ctpop, [builder.bitcast(args[1], _BYTES)])
            total = builder.add(builder.bitcast(args[0], _BYTES), counts)
            return builder.bitcast(total, args[0].type)

        return vec_type(acc, x), codegen

    return fn


vcount_bytes = _count_bytes(I64x8)
vcount_bytes.__doc__ = """``acc + popcount(x)`` per byte (byte lanes of 8-lane vectors): at most
8 per step, so 31 steps fit before :func:`vwiden_add`."""
vcount_bytes32 = _count_bytes(I32x16)
vcount_bytes32.__doc__ = """:func:`vcount_bytes` on 16-lane vectors (see :func:`vwiden32_add`)."""


_NIBBLE_COUNTS = [bin(i).count("1") for i in range(16)]


def _nibble_lookup(builder, x):
    """Per byte, the popcount of ``x``'s byte (<64 x i8>, every byte at most 15): ``vpshufb``
    of a 16-entry table on x86 with AVX2 (each 32-byte half one instruction), LLVM's byte
    popcount elsewhere."""
    if "avx2" not in target().isa:
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_BYTES, [_BYTES]), "llvm.ctpop.v64i8"
        )
        return builder.call(ctpop, [x])
    half = ir.VectorType(_I8, 32)
    idx = ir.VectorType(_I32, 32)
    table = ir.Constant(half, [ir.Constant(_I8, c) for c in _NIBBLE_COUNTS * 2])
    pshufb = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(half, [half, half]), "llvm.x86.avx2.pshuf.b"
    )
    lo = builder.shuffle_vector(x, x, ir.Constant(idx, list(range(32))))
    hi = builder.shuffle_vector(x, x, ir.Constant(idx, list(range(32, 64))))
    return builder.shuffle_vector(
        builder.call(pshufb, [table, lo]),
        builder.call(pshufb, [table, hi]),
        ir.Constant(ir.VectorType(_I32, 64), list(range(64))),
    )


@intrinsic
def vcount_nibbles(typingctx, acc, lo, hi):
    """``acc + popcount(lo) + popcount(hi)`` per byte, where every byte of ``lo`` and ``hi``
    is at most 15: the low and high nibbles of ``a ^ w``, split beforehand
    (:func:`.bitpack.split_nibbles`), so each byte's count is one table lookup and no masking
    or shifting is left in the loop. At most 8 per step, as :func:`vcount_bytes`."""
    if acc != I64x8 or lo != I64x8 or hi != I64x8:
        return None

    def codegen(context, builder, sig, args):
        total = builder.bitcast(args[0], _BYTES)
        for x in args[1:]:
            total = builder.add(total, _nibble_lookup(builder, builder.bitcast(x, _BYTES)))
        return builder.bitcast(total, _VEC)

    return I64x8(acc, lo, hi), codegen


def _mask64(value: int):
    return ir.Constant(_VEC, [ir.Constant(_I64, value)] * 8)


def _lane_sums64(builder, x):
    """The sum of the 8 bytes of each 64-bit lane of ``x`` (<8 x i64>)."""
    isa = target().isa
    if "avx512bw" in isa:
        psad = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_BYTES, _BYTES]), "llvm.x86.avx512.psad.bw.512"
        )
        return builder.call(psad, [builder.bitcast(x, _BYTES), ir.Constant(_BYTES, None)])
    if "avx2" in isa:
        half = ir.VectorType(_I8, 32)
        quad = ir.VectorType(_I64, 4)
        psad = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(quad, [half, half]), "llvm.x86.avx2.psad.bw"
        )
        b = builder.bitcast(x, _BYTES)
        idx = ir.VectorType(_I32, 32)
        zero = ir.Constant(half, None)
        lo = builder.shuffle_vector(b, b, ir.Constant(idx, list(range(32))))
        hi = builder.shuffle_vector(b, b, ir.Constant(idx, list(range(32, 64))))
        slo = builder.call(psad, [lo, zero])
        shi = builder.call(psad, [hi, zero])
        return builder.shuffle_vector(slo, shi, ir.Constant(ir.VectorType(_I32, 8), list(range(8))))
    # portable: pairs of bytes, then of 16-bit halves, then of 32-bit halves
    y = builder.add(
        builder.and_(x, _mask64(0x00FF00FF00FF00FF)),
        builder.and_(builder.lshr(x, _mask64(8)), _mask64(0x00FF00FF00FF00FF)),
    )
    y = builder.add(
        builder.and_(y, _mask64(0x0000FFFF0000FFFF)),
        builder.and_(builder.lshr(y, _mask64(16)), _mask64(0x0000FFFF0000FFFF)),
    )
    return builder.add(builder.and_(y, _mask64(0xFFFFFFFF)), builder.lshr(y, _mask64(32)))


@intrinsic
def vwiden_add(typingctx, acc, counts, shift):
    """``acc + (sum of each 64-bit lane's byte counts) << shift`` (``shift`` a constant): byte
    counts from :func:`vcount_bytes` into 64-bit lane totals (``vpsadbw`` on x86)."""
    if acc != I64x8 or counts != I64x8 or not isinstance(shift, types.IntegerLiteral):
        return None
    amount = shift.literal_value

    def codegen(context, builder, sig, args):
        sums = _lane_sums64(builder, args[1])
        if amount:
            sums = builder.shl(sums, _mask64(amount))
        return builder.add(args[0], sums)

    return I64x8(acc, counts, shift), codegen


def _mask32(value: int):
    return ir.Constant(_VEC32, [ir.Constant(_I32, value)] * 16)


@intrinsic
def vwiden32_add(typingctx, acc, counts):
    """``acc + sum of each 32-bit lane's byte counts``, on 16-lane vectors."""
    if acc != I32x16 or counts != I32x16:
        return None

    def codegen(context, builder, sig, args):
        x = args[1]
        y = builder.add(
            builder.and_(x, _mask32(0x00FF00FF)),
            builder.and_(builder.lshr(x, _mask32(8)), _mask32(0x00FF00FF)),
        )
        y = builder.add(builder.and_(y, _mask32(0xFFFF)), builder.lshr(y, _mask32(16)))
        return builder.add(args[0], y)

    return I32x16(acc, counts), codegen


@intrinsic
def as_i64x8(typingctx, vec):
    """The bits of a 16 x 32-bit vector as 8 x 64-bit lanes (to store it with ``vstore``)."""
    if vec != I32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _VEC)

    return I64x8(vec), codegen


@intrinsic
def as_i32x16(typingctx, vec):
    """The bits of an 8 x 64-bit vector as 16 x 32-bit lanes."""
    if vec != I64x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _VEC32)

    return I32x16(vec), codegen
