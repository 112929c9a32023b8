"""Binarisers as swappable objects, in the spirit of larq's quantizers.

A layer holds an ``input_quantizer`` (applied to its activations) and a ``kernel_quantizer``
(applied to its latent weights). Each is a small ``nn.Module`` whose forward is the binariser and
whose backward is the straight-through estimator (STE) that makes the binariser trainable. ``None``
stands for "keep real", which is how step 1 of S2-BNN's two-step recipe (binary activations, real
weights) is a setting rather than a second model.

Each quantizer's docstring gives its forward function ``q`` and the surrogate gradient its
backward uses in place of ``dq/dx`` (zero almost everywhere for a sign), as larq's do.

Convention shared with the packed CPU kernels: ``sign(0) = +1``. ``torch.sign`` maps 0 to 0,
which is not a binary value and could not be packed into a bit.

A quantizer object belongs to one layer. :func:`get_quantizer` builds a fresh one for a name and
takes an object at most once: the second layer handed the same object would silently share its
parameters (an RSign's thresholds) and its place in ``named_modules()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "Quantizer",
    "ApproxSign",
    "SteSign",
    "ScaledSign",
    "QUANTIZERS",
    "binary_sign",
    "get_quantizer",
    "is_binary",
]


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0``, -1 elsewhere (never 0), in ``x``'s dtype."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _approx_sign_derivative(x: torch.Tensor) -> torch.Tensor:
    """ReActNet's piecewise-polynomial derivative: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), else 0."""
    slope = torch.where(x < 0, 2.0 + 2.0 * x, 2.0 - 2.0 * x)
    return torch.where(x.abs() < 1.0, slope, torch.zeros_like(slope))


def _clipped_identity_derivative(x: torch.Tensor) -> torch.Tensor:
    """The clipped identity's derivative: 1 where ``|x| <= 1``, else 0."""
    return (x.abs() <= 1.0).to(x.dtype)


# The autograd Functions' forward and backward are staticmethods that name their derivative
# directly: torch.compile (Dynamo) traces a Function only through staticmethods; a classmethod
# forward makes it raise inside the Function (a graph break at every sign, and each module then
# compiles on its own, once per distinct shape, up to the recompile limit).


class _ApproxSignFn(torch.autograd.Function):
    """sign forward (``sign(0) = +1``); the backward multiplies by ReActNet's polynomial STE."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * _approx_sign_derivative(x).to(grad.dtype)


class _SteSignFn(torch.autograd.Function):
    """sign forward (``sign(0) = +1``); the backward passes the gradient where ``|x| <= 1``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * _clipped_identity_derivative(x).to(grad.dtype)


class Quantizer(nn.Module):
    """Base class: a parameter-free binariser. ``binary`` says whether its output has 1 bit."""

    binary: bool = True
    name: str = ""

    def extra_repr(self) -> str:
        return ""


class ApproxSign(Quantizer):
    """Activation binariser of ReActNet / Bi-Real Net: sign with a polynomial STE (the default).

    Forward::

        q(x) = +1 if x >= 0 else -1

    Surrogate gradient, the derivative of Bi-Real Net's piecewise quadratic approximation of sign
    (it peaks at 2 where ``x = 0`` and vanishes outside (-1, 1))::

        dq/dx = 2 + 2x   if -1 < x < 0
                2 - 2x   if  0 <= x < 1
                0        otherwise
    """

    name = "approx_sign"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ApproxSignFn.apply(x)


class SteSign(Quantizer):
    """Activation binariser with the classic clipped-identity STE (BinaryNet, XNOR-Net).

    Forward::

        q(x) = +1 if x >= 0 else -1

    Surrogate gradient, the identity clipped to [-1, 1] (larq's ``ste_sign``, clip value 1)::

        dq/dx = 1 if |x| <= 1 else 0
    """

    name = "ste_sign"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SteSignFn.apply(x)


class ScaledSign(Quantizer):
    """Weight binariser: ``sign(w)`` times a per-output-channel scale ``mean(|w|)``.

    Forward, for the weights ``w[c]`` of output channel ``c``::

        q(w)[c] = a[c] * sign(w[c]),   a[c] = mean(|w[c]|),   sign(0) = +1

    Surrogate gradient: the scale is detached (a constant for the gradient, as in ReActNet); the
    latent weights get the clipped identity, times the scale::

        dq/dw[c] = a[c] if |w[c]| <= 1 else 0

    The scale is what the packed kernels fold into their output transform, so the binary part
    stays a pure popcount.
    """

    name = "scaled_sign"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale(w)
        return scale * _SteSignFn.apply(w)

    @staticmethod
    def scale(w: torch.Tensor) -> torch.Tensor:
        """Per-output-channel ``mean(|w|)``, shaped to broadcast against ``w``."""
        dims = tuple(range(1, w.dim()))
        return w.abs().mean(dim=dims, keepdim=True).detach()


QUANTIZERS: dict[str, Callable[[], Quantizer]] = {
    ApproxSign.name: ApproxSign,
    SteSign.name: SteSign,
    ScaledSign.name: ScaledSign,
}


# Quantizer objects already handed to a layer by get_quantizer (weakly: a dropped layer's
# quantizer is forgotten with it; copy.deepcopy makes a new, unclaimed object).
_TAKEN: weakref.WeakSet[Quantizer] = weakref.WeakSet()


def get_quantizer(spec: str | Quantizer | None) -> Quantizer | None:
    """Turn a quantizer name, object or ``None`` (= keep real) into a module that is the caller's
    alone.

    A name builds a fresh module on every call. An object is returned as it is the first time and
    refused (``ValueError``) the second, as is a module this function built for a name and a layer
    then holds: two layers holding one quantizer would share its
    parameters (an :class:`~s2bnn_plugin.nn.RSign`'s thresholds) without anyone asking for it.
    Pass a name, a new object, or ``copy.deepcopy(quantizer)`` to each layer instead.
    """
    if spec is None:
        return None
    if isinstance(spec, Quantizer):
        if spec in _TAKEN:
            name = f"its name {spec.name!r}, " if spec.name in QUANTIZERS else ""
            raise ValueError(
                f"this {type(spec).__name__} object is already used by another layer; layers "
                "sharing a quantizer would share its parameters. Give each layer its own: "
                f"{name}a new object or copy.deepcopy() of this one"
            )
        _TAKEN.add(spec)
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key in ("none", "real", "identity"):
            return None
        if key not in QUANTIZERS:
            raise ValueError(
                f"unknown quantizer {spec!r}; choose one of {sorted(QUANTIZERS)} or None (real)"
            )
        fresh = QUANTIZERS[key]()
        _TAKEN.add(fresh)  # it belongs to the caller's layer from now on
        return fresh
    raise TypeError(f"a quantizer is a name, a Quantizer or None, not {type(spec).__name__}")


def is_binary(quantizer: Quantizer | None) -> bool:
    """True when ``quantizer`` produces 1-bit values."""
    return quantizer is not None and quantizer.binary
