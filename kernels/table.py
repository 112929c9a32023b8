"""The per-job scratch of the binary convolution drivers: a block's position table, then room
for one micro-kernel call's popcounts.

A block's epilogue needs, for each of its output positions, where the values go and where the
residual comes from. The driver writes them once per block into this table and every weight block
of the block reads them back: ``ROW`` int64 slots per position, at most :data:`MAX_POSITIONS`
positions, one layout for both epilogues (from the micro-kernel's registers, :mod:`.epilogue`,
and through the block buffer, :mod:`.bconv`); the slots are the ``AT_*`` names below. From
:data:`RESULTS` on, the tap loops that work in passes (:mod:`.taps`) leave a call's 16 result
vectors before the epilogue reads them back.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "AT_BITS",
    "AT_BORDER",
    "AT_PARITY",
    "AT_RES",
    "AT_RES_BELOW",
    "AT_RES_DIAG",
    "AT_RES_RIGHT",
    "AT_TAPS",
    "AT_Z",
    "MAX_POSITIONS",
    "RESULTS",
    "RESULT_WORDS",
    "ROW",
    "block_scratch",
]

AT_Z = 0  # the float map offset (of the 2x2-averaged map with ``pool_out``)
AT_RES = 1  # the residual offset (its 2x2 window's first pixel when pooled)
AT_RES_RIGHT = 2  # the window's other pixels (buffered epilogue; a window cut by the map's
AT_RES_BELOW = 3  # right or bottom edge repeats the first pixel there, see ``AT_TAPS``)
AT_RES_DIAG = 4
AT_TAPS = 5  # how many of the window's pixels count: 1, 2 or 4 (1 when not pooled)
AT_BITS = 6  # the packed-sign offset of the position's first channel, in uint16 units
AT_BORDER = 7  # the border table row (:func:`.border.border_class`) times the table's columns
AT_PARITY = 8  # the output row's parity (with ``pool_out``: which half of a window it writes)
ROW = 9
MAX_POSITIONS = 8  # output positions per block (:func:`.micro.positions_for`)
RESULTS = ROW * MAX_POSITIONS  # where a micro-kernel call's popcounts go
RESULT_WORDS = 128  # 16 vectors of 8 x 64 (or 16 x 32) bits


@njit(cache=True)
def block_scratch(positions):
    """The scratch of a job whose blocks have ``positions`` output positions (refused above
    :data:`MAX_POSITIONS`: the epilogues and tap loops index it without bounds checks)."""
    if positions < 1 or positions > MAX_POSITIONS:
        raise ValueError("block_scratch: a block has 1 to 8 output positions")
    return np.empty(RESULTS + RESULT_WORDS, np.int64)
