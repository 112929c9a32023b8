"""LLVM-level building blocks Numba does not offer: popcount, unchecked loads, 8-lane vectors.

Why: Numba has no ``np.bitwise_count`` in nopython mode, and its auto-vectoriser keeps a binary
convolution's accumulators in memory (one load and one store per vector of work). Here an 8 x
uint64 vector is a Numba type whose LLVM representation *is* ``<8 x i64>``, so a micro-kernel
keeps its accumulators in registers; LLVM lowers ``llvm.ctpop.v8i64`` to ``vpopcntq`` on CPUs
with AVX-512 VPOPCNTDQ and to portable bit tricks elsewhere (e.g. ``NUMBA_CPU_NAME=generic``).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = [
    "F32x16",
    "address",
    "I32x16",
    "I64x8",
    "fadd",
    "ffma",
    "fdiv",
    "fload",
    "fload_n",
    "fmul",
    "fprelu",
    "fsplat",
    "fstore",
    "fstore_i32",
    "iadd16",
    "fstore_n",
    "ffrom_i32",
    "ffrom_i64x2",
    "load",
    "load_u64",
    "popcount64",
    "sign_bits32",
    "sign_bits64",
    "sign_mask16",
    "store_u16",
    "store_u32",
    "sign_bits_partial",
    "store",
    "vload",
    "vload32",
    "vstore",
    "vstore_f32",
    "vstore32_f32",
    "vstore32_dot",
    "vstore_dot",
    "vxor_popcount_add",
    "vxor_popcount_add32",
    "vzero",
    "vzero32",
]

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_VEC = ir.VectorType(_I64, 8)
_F16 = ir.VectorType(ir.FloatType(), 16)


class I64x8Type(types.Type):
    """Eight 64-bit lanes held in one LLVM vector value (a zmm register on AVX-512)."""

    def __init__(self) -> None:
        super().__init__(name="i64x8")


I64x8 = I64x8Type()


@register_model(I64x8Type)
class _I64x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _base_ptr(context, builder, arrty, arr):
    """The data pointer of a C-contiguous 1-D array, or the raw pointer itself."""
    if isinstance(arrty, types.CPointer):
        return arr
    return context.make_array(arrty)(context, builder, arr).data


def _element_ptr(context, builder, arrty, arr, idx):
    """Pointer to element ``idx`` of a flat array or raw pointer (no bounds or wraparound
    check)."""
    return builder.gep(_base_ptr(context, builder, arrty, arr), [idx])


def _flat(arr) -> bool:
    """A C-contiguous 1-D array, or a raw pointer from :func:`address`."""
    if isinstance(arr, types.CPointer):
        return True
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"


def _check_u64_array(arr) -> bool:
    """A flat array (or pointer) of 64-bit integers, read as uint64 words."""
    return _flat(arr) and arr.dtype in (types.uint64, types.int64)


@intrinsic
def address(typingctx, arr):
    """The data pointer of a flat array, typed (``CPointer(dtype)``); every memory intrinsic
    here takes it in place of the array.

    Why: Numba reference-counts arrays passed between compiled functions. Inside a micro-kernel
    those increments and decrements are calls to the runtime, and the one after the inner loop
    forces every accumulator out of its register and back; a raw pointer is not counted. The
    caller keeps the array alive and has checked its size.
    """
    if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C":
        return None

    def codegen(context, builder, sig, args):
        return context.make_array(sig.args[0])(context, builder, args[0]).data

    return types.CPointer(arr.dtype)(arr), codegen


@intrinsic
def popcount64(typingctx, x):
    """Number of set bits of a 64-bit integer (``llvm.ctpop``: ``popcnt``/``vpopcntq``)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return types.int64(x), codegen


@intrinsic
def load_u64(typingctx, arr, idx):
    """``arr[idx]`` for a flat uint64 array without Numba's negative-index wraparound code."""
    if not _check_u64_array(arr) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1]))

    return types.uint64(arr, idx), codegen


@intrinsic
def load(typingctx, arr, idx):
    """``arr[idx]`` of a flat contiguous array with no wraparound code.

    Why: Numba turns ``arr[i]`` with a signed ``i`` into ``arr[i + n if i < 0 else i]``; inside a
    loop that select makes LLVM vectorise with gathers instead of contiguous vector loads.
    """
    if not _flat(arr) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1]))

    return arr.dtype(arr, idx), codegen


@intrinsic
def store(typingctx, arr, idx, val):
    """``arr[idx] = val`` (cast to the array's dtype) with no wraparound code (see :func:`load`)."""
    if not _flat(arr) or not isinstance(idx, types.Integer) or not isinstance(val, types.Number):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
        builder.store(v, _element_ptr(context, builder, sig.args[0], args[0], args[1]))
        return context.get_dummy_value()

    return types.none(arr, idx, val), codegen


@intrinsic
def vzero(typingctx):
    """An all-zero 8-lane vector."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, None)

    return I64x8(), codegen


@intrinsic
def vload(typingctx, arr, idx):
    """Eight consecutive uint64 ``arr[idx:idx + 8]`` as one vector (unaligned load)."""
    if not _check_u64_array(arr) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=8)

    return I64x8(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, vec):
    """Store the eight lanes of ``vec`` to ``arr[idx:idx + 8]`` (a flat int64 array)."""
    ok = _flat(arr) and arr.dtype == types.int64
    if not ok or not isinstance(idx, types.Integer) or vec != I64x8:
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VEC.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


@intrinsic
def vxor_popcount_add(typingctx, acc, a, w):
    """``acc + popcount(broadcast(a) ^ w)`` lane-wise: one step of eight binary dot products."""
    if acc != I64x8 or w != I64x8 or not isinstance(a, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        acc_v, a_v, w_v = args
        zero_i32 = ir.Constant(ir.IntType(32), 0)
        splat = builder.insert_element(ir.Constant(_VEC, ir.Undefined), a_v, zero_i32)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 8), None)
        splat = builder.shuffle_vector(splat, ir.Constant(_VEC, ir.Undefined), mask)
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC]), "llvm.ctpop.v8i64"
        )
        return builder.add(acc_v, builder.call(ctpop, [builder.xor(splat, w_v)]))

    return I64x8(acc, a, w), codegen


def _splat_i32(builder, value, lanes):
    vty = ir.VectorType(_I32, lanes)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(vty, None))


def _store_dot(builder, ptr, counts, ktot, lanes):
    """Store int32 ``ktot - 2 * counts`` (the +-1 dot products) at ``ptr``."""
    vty = ir.VectorType(_I32, lanes)
    if counts.type != vty:
        counts = builder.trunc(counts, vty)
    k = ktot if ktot.type == _I32 else builder.trunc(ktot, _I32)
    dot = builder.sub(_splat_i32(builder, k, lanes), builder.shl(counts, ir.Constant(vty, 1)))
    builder.store(dot, builder.bitcast(ptr, vty.as_pointer()), align=4)


def _dot_store_typing(arr, idx, vec, ktot, vec_type):
    ok = _flat(arr) and arr.dtype == types.int32
    ints = isinstance(idx, types.Integer) and isinstance(ktot, types.Integer)
    return ok and ints and vec == vec_type


@intrinsic
def vstore_dot(typingctx, arr, idx, vec, ktot):
    """Store the 8 lanes ``ktot - 2 * vec`` as int32 to ``arr[idx:idx + 8]`` (popcounts to dot
    products, straight from the registers)."""
    if not _dot_store_typing(arr, idx, vec, ktot, I64x8):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        _store_dot(builder, ptr, args[2], args[3], 8)
        return context.get_dummy_value()

    return types.none(arr, idx, vec, ktot), codegen


def _sign_bits(lanes):
    """An intrinsic packing ``lanes`` (32 or 64) signs into the low bits of a uint64."""

    @intrinsic
    def sign_bits(typingctx, z, zoff, thr, toff):
        ok = all(
            isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32
            for a in (z, thr)
        )
        if not ok or not isinstance(zoff, types.Integer) or not isinstance(toff, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            vty = ir.VectorType(ir.FloatType(), lanes)
            zp = _element_ptr(context, builder, sig.args[0], args[0], args[1])
            tp = _element_ptr(context, builder, sig.args[2], args[2], args[3])
            zv = builder.load(builder.bitcast(zp, vty.as_pointer()), align=4)
            tv = builder.load(builder.bitcast(tp, vty.as_pointer()), align=4)
            ge = builder.fcmp_ordered(">=", builder.fadd(zv, tv), ir.Constant(vty, None))
            bits = builder.bitcast(builder.not_(ge), ir.IntType(lanes))
            return bits if lanes == 64 else builder.zext(bits, _I64)

        return types.uint64(z, zoff, thr, toff), codegen

    return sign_bits


# Bit j set where ``not (z[zoff + j] + thr[toff + j] >= 0)``, j < 64: one packed word. A
# <64 x float> add and compare whose <64 x i1> result is reinterpreted as an integer: on AVX-512
# four ``vcmpps`` into mask registers instead of 64 scalar compares and shifts.
sign_bits64 = _sign_bits(64)
# The same for exactly 32 channels, in the low half of the word (no masked loads).
sign_bits32 = _sign_bits(32)


@intrinsic
def sign_bits_partial(typingctx, z, zoff, thr, toff, count):
    """:func:`sign_bits64` for the first ``count`` (< 64) channels only; higher bits are 0.

    Masked loads (``llvm.masked.load``) never touch memory past ``count``, so the last word of a
    row needs neither a scalar loop nor slack after the array.
    """
    ok = all(
        isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32 for a in (z, thr)
    )
    ints = all(isinstance(a, types.Integer) for a in (zoff, toff, count))
    if not ok or not ints:
        return None

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(ir.FloatType(), 64)
        i1v = ir.VectorType(ir.IntType(1), 64)
        # lanes below count: (1 << count) - 1 reinterpreted as <64 x i1> (one kmovq on AVX-512)
        low = builder.sub(builder.shl(ir.Constant(_I64, 1), args[4]), ir.Constant(_I64, 1))
        mask = builder.bitcast(low, i1v)
        masked_load = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vty, [vty.as_pointer(), ir.IntType(32), i1v, vty]),
            "llvm.masked.load.v64f32.p0",
        )
        zero = ir.Constant(vty, None)
        align = ir.Constant(ir.IntType(32), 4)
        zp = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        tp = _element_ptr(context, builder, sig.args[2], args[2], args[3])
        zv = builder.call(masked_load, [builder.bitcast(zp, vty.as_pointer()), align, mask, zero])
        tv = builder.call(masked_load, [builder.bitcast(tp, vty.as_pointer()), align, mask, zero])
        ge = builder.fcmp_ordered(">=", builder.fadd(zv, tv), zero)
        return builder.and_(builder.bitcast(builder.not_(ge), _I64), low)

    return types.uint64(z, zoff, thr, toff, count), codegen


@intrinsic
def vstore_f32(typingctx, arr, idx, vec):
    """Convert the eight integer lanes of ``vec`` to float32, store to ``arr[idx:idx + 8]``.

    Popcounts are small integers (exact in float32); the output transform then runs on 16-lane
    float vectors instead of 8-lane integer ones. They fit in 32 bits, so the lanes are narrowed
    first: int32 to float32 is one instruction everywhere, while int64 to float32 has none
    before AVX-512DQ (LLVM would convert lane by lane).
    """
    ok = _flat(arr) and arr.dtype == types.float32
    if not ok or not isinstance(idx, types.Integer) or vec != I64x8:
        return None

    def codegen(context, builder, sig, args):
        fvec = ir.VectorType(ir.FloatType(), 8)
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        values = builder.sitofp(builder.trunc(args[2], ir.VectorType(_I32, 8)), fvec)
        builder.store(values, builder.bitcast(ptr, fvec.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


# -- 16 x int32 vectors: layers with at most 32 input channels --------------------------------
# A pixel of such a layer fills only the low half of its uint64 word; popcounts on 32-bit lanes
# (``vpopcntd``) do twice the useful work per instruction of 64-bit ones there.

_VEC32 = ir.VectorType(_I32, 16)


class I32x16Type(types.Type):
    """Sixteen 32-bit lanes held in one LLVM vector value."""

    def __init__(self) -> None:
        super().__init__(name="i32x16")


I32x16 = I32x16Type()


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC32)


@intrinsic
def vzero32(typingctx):
    """An all-zero 16-lane vector."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC32, None)

    return I32x16(), codegen


@intrinsic
def vload32(typingctx, arr, idx):
    """Sixteen uint32 from 32-bit element ``idx`` on of a uint64 array (its memory as uint32)."""
    if not _check_u64_array(arr) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        data = _base_ptr(context, builder, sig.args[0], args[0])
        ptr = builder.gep(builder.bitcast(data, _I32.as_pointer()), [args[1]])
        return builder.load(builder.bitcast(ptr, _VEC32.as_pointer()), align=4)

    return I32x16(arr, idx), codegen


@intrinsic
def vxor_popcount_add32(typingctx, acc, a, w):
    """``acc + popcount(broadcast(low 32 bits of a) ^ w)`` lane-wise, on 16 lanes."""
    if acc != I32x16 or w != I32x16 or not isinstance(a, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        acc_v, a_v, w_v = args
        low = builder.trunc(a_v, _I32) if a_v.type.width > 32 else a_v
        splat = builder.insert_element(ir.Constant(_VEC32, ir.Undefined), low, ir.Constant(_I32, 0))
        mask = ir.Constant(ir.VectorType(_I32, 16), None)
        splat = builder.shuffle_vector(splat, ir.Constant(_VEC32, ir.Undefined), mask)
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC32, [_VEC32]), "llvm.ctpop.v16i32"
        )
        return builder.add(acc_v, builder.call(ctpop, [builder.xor(splat, w_v)]))

    return I32x16(acc, a, w), codegen


@intrinsic
def vstore32_f32(typingctx, arr, idx, vec):
    """Convert the sixteen integer lanes of ``vec`` to float32, store to ``arr[idx:idx + 16]``."""
    ok = _flat(arr) and arr.dtype == types.float32
    if not ok or not isinstance(idx, types.Integer) or vec != I32x16:
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        values = builder.sitofp(args[2], _F16)
        builder.store(values, builder.bitcast(ptr, _F16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


@intrinsic
def vstore32_dot(typingctx, arr, idx, vec, ktot):
    """:func:`vstore_dot` for a 16-lane 32-bit vector."""
    if not _dot_store_typing(arr, idx, vec, ktot, I32x16):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        _store_dot(builder, ptr, args[2], args[3], 16)
        return context.get_dummy_value()

    return types.none(arr, idx, vec, ktot), codegen


@intrinsic
def iadd16(typingctx, arr, idx, other, oidx):
    """``arr[idx:idx + 16] += other[oidx:oidx + 16]`` on int32 (one vector add)."""
    ok = all(_flat(a) and a.dtype == types.int32 for a in (arr, other))
    if not ok or not isinstance(idx, types.Integer) or not isinstance(oidx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(_I32, 16)
        p = builder.bitcast(
            _element_ptr(context, builder, sig.args[0], args[0], args[1]), vty.as_pointer()
        )
        q = builder.bitcast(
            _element_ptr(context, builder, sig.args[2], args[2], args[3]), vty.as_pointer()
        )
        total = builder.add(builder.load(p, align=4), builder.load(q, align=4))
        builder.store(total, p, align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, other, oidx), codegen


# -- 16 x float32 vectors: the float epilogue without alias checks or remainder loops ----------


class F32x16Type(types.Type):
    """Sixteen float32 lanes held in one LLVM vector value."""

    def __init__(self) -> None:
        super().__init__(name="f32x16")


F32x16 = F32x16Type()


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F16)


def _f32_flat(arr) -> bool:
    return _flat(arr) and arr.dtype == types.float32


def _lane_mask(builder, count):
    """<16 x i1> with the lanes below ``count`` (0..16) set."""
    i16 = ir.IntType(16)
    wide = builder.sub(builder.shl(ir.Constant(_I64, 1), count), ir.Constant(_I64, 1))
    return builder.bitcast(builder.trunc(wide, i16), ir.VectorType(ir.IntType(1), 16))


@intrinsic
def fload(typingctx, arr, idx):
    """``arr[idx:idx + 16]`` of a flat float32 array as a vector (unaligned)."""
    if not _f32_flat(arr) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _F16.as_pointer()), align=4)

    return F32x16(arr, idx), codegen


@intrinsic
def fload_n(typingctx, arr, idx, count):
    """The first ``count`` (< 16) lanes of ``arr[idx:]``, zeros above; no access past them."""
    ints = isinstance(idx, types.Integer) and isinstance(count, types.Integer)
    if not _f32_flat(arr) or not ints:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(
                _F16, [_F16.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), 16), _F16]
            ),
            "llvm.masked.load.v16f32.p0",
        )
        ptr = builder.bitcast(
            _element_ptr(context, builder, sig.args[0], args[0], args[1]), _F16.as_pointer()
        )
        mask = _lane_mask(builder, args[2])
        return builder.call(
            fn, [ptr, ir.Constant(ir.IntType(32), 4), mask, ir.Constant(_F16, None)]
        )

    return F32x16(arr, idx, count), codegen


@intrinsic
def fstore(typingctx, arr, idx, vec):
    """Store the 16 lanes of ``vec`` to ``arr[idx:idx + 16]``."""
    if not _f32_flat(arr) or not isinstance(idx, types.Integer) or vec != F32x16:
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _F16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


@intrinsic
def fstore_i32(typingctx, arr, idx, vec):
    """Store the 16 lanes of ``vec``, converted to int32 (truncating), to ``arr[idx:idx + 16]``."""
    ok = _flat(arr) and arr.dtype == types.int32
    if not ok or not isinstance(idx, types.Integer) or vec != F32x16:
        return None

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(_I32, 16)
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(builder.fptosi(args[2], vty), builder.bitcast(ptr, vty.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


@intrinsic
def fstore_n(typingctx, arr, idx, vec, count):
    """Store the first ``count`` (< 16) lanes of ``vec`` to ``arr[idx:]``; nothing beyond."""
    ints = isinstance(idx, types.Integer) and isinstance(count, types.Integer)
    if not _f32_flat(arr) or not ints or vec != F32x16:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(
                ir.VoidType(),
                [_F16, _F16.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), 16)],
            ),
            "llvm.masked.store.v16f32.p0",
        )
        ptr = builder.bitcast(
            _element_ptr(context, builder, sig.args[0], args[0], args[1]), _F16.as_pointer()
        )
        mask = _lane_mask(builder, args[3])
        builder.call(fn, [args[2], ptr, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()

    return types.none(arr, idx, vec, count), codegen


@intrinsic
def fsplat(typingctx, x):
    """A vector of 16 copies of ``x`` (converted to float32)."""
    if not isinstance(x, types.Number):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        vec = builder.insert_element(
            ir.Constant(_F16, ir.Undefined), v, ir.Constant(ir.IntType(32), 0)
        )
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), None)
        return builder.shuffle_vector(vec, ir.Constant(_F16, ir.Undefined), mask)

    return F32x16(x), codegen


def _binary(op: str):
    @intrinsic
    def fn(typingctx, a, b):
        if a != F32x16 or b != F32x16:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return F32x16(a, b), codegen

    return fn


fadd = _binary("fadd")
fadd.__doc__ = "Lane-wise ``a + b`` (float32, IEEE: no contraction with a product)."
fmul = _binary("fmul")
fmul.__doc__ = "Lane-wise ``a * b``."
fdiv = _binary("fdiv")
fdiv.__doc__ = "Lane-wise ``a / b`` (IEEE division, as in PyTorch's average pooling)."


@intrinsic
def ffma(typingctx, a, b, c):
    """Lane-wise ``a * b + c`` rounded once (``llvm.fma``): exact, and so the same bits as
    the two-step form, where the product and sum are integers below 2**24."""
    if a != F32x16 or b != F32x16 or c != F32x16:
        return None

    def codegen(context, builder, sig, args):
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_F16, [_F16, _F16, _F16]), "llvm.fma.v16f32"
        )
        return builder.call(fma, list(args))

    return F32x16(a, b, c), codegen


@intrinsic
def fprelu(typingctx, y, slope):
    """Lane-wise ``y if y > 0 else y * slope`` (PReLU; NaN stays NaN)."""
    if y != F32x16 or slope != F32x16:
        return None

    def codegen(context, builder, sig, args):
        y_v, s_v = args
        positive = builder.fcmp_ordered(">", y_v, ir.Constant(_F16, None))
        return builder.select(positive, y_v, builder.fmul(y_v, s_v))

    return F32x16(y, slope), codegen


@intrinsic
def sign_mask16(typingctx, y, lo):
    """Bit ``j`` set where ``not (y[j] >= lo[j])`` (NaN sets it), j < 16, as a uint64: the
    packed signs of 16 channels straight from a register (one ``vcmpps`` into a mask).

    With ``lo = -thr`` this is exactly ``not (y + thr >= 0)``, the sign of the next layer's
    shifted input: a correctly rounded sum is zero only when it is exactly zero, and otherwise
    has the sign of the exact sum (finite ``thr``; the packer refuses any other).
    """
    if y != F32x16 or lo != F32x16:
        return None

    def codegen(context, builder, sig, args):
        ge = builder.fcmp_ordered(">=", args[0], args[1])
        return builder.zext(builder.bitcast(builder.not_(ge), ir.IntType(16)), _I64)

    return types.uint64(y, lo), codegen


@intrinsic
def store_u16(typingctx, arr, idx, val):
    """Store the low 16 bits of ``val`` as the ``idx``-th uint16 of a flat uint64 array (16
    channels' packed signs into their quarter of a word: little-endian, bits ``16 * (idx % 4)``
    of word ``idx // 4``)."""
    ints = isinstance(idx, types.Integer) and isinstance(val, types.Integer)
    if not _check_u64_array(arr) or not ints:
        return None

    def codegen(context, builder, sig, args):
        i16 = ir.IntType(16)
        base = builder.bitcast(_base_ptr(context, builder, sig.args[0], args[0]), i16.as_pointer())
        v = context.cast(builder, args[2], sig.args[2], types.uint64)
        builder.store(builder.trunc(v, i16), builder.gep(base, [args[1]]), align=2)
        return context.get_dummy_value()

    return types.none(arr, idx, val), codegen


@intrinsic
def store_u32(typingctx, arr, idx, val):
    """Store the low 32 bits of ``val`` as the ``idx``-th uint32 of a flat uint64 array (32
    channels' packed signs into their half of a word)."""
    ints = isinstance(idx, types.Integer) and isinstance(val, types.Integer)
    if not _check_u64_array(arr) or not ints:
        return None

    def codegen(context, builder, sig, args):
        base = builder.bitcast(_base_ptr(context, builder, sig.args[0], args[0]), _I32.as_pointer())
        v = context.cast(builder, args[2], sig.args[2], types.uint64)
        builder.store(builder.trunc(v, _I32), builder.gep(base, [args[1]]), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, val), codegen


@intrinsic
def ffrom_i32(typingctx, vec):
    """The 16 integer lanes of ``vec`` as float32 (popcounts: exact), still in a register."""
    if vec != I32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _F16)

    return F32x16(vec), codegen


@intrinsic
def ffrom_i64x2(typingctx, lo, hi):
    """Two 8-lane integer vectors as one 16-lane float32 vector (``lo``'s lanes first):
    the popcounts of 16 channels from a wide micro-kernel's registers, for the epilogue."""
    if lo != I64x8 or hi != I64x8:
        return None

    def codegen(context, builder, sig, args):
        # the counts fit in 32 bits: the low halves of both registers in one permute, then a
        # single 16-lane conversion (rather than two 8-lane ones and an insert)
        i16 = ir.VectorType(_I32, 16)
        a = builder.bitcast(args[0], i16)
        b = builder.bitcast(args[1], i16)
        low = ir.Constant(i16, [ir.Constant(_I32, 2 * i) for i in range(16)])
        return builder.sitofp(builder.shuffle_vector(a, b, low), _F16)

    return F32x16(lo, hi), codegen
