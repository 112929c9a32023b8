"""The per-job scratch of the fused binary convolution: a block's position table.

A block's epilogue needs, for each of its output positions, where the values go and where the
residual comes from. The driver writes them once per block into this table and every weight block
of the block reads them back: ``ROW`` int64 slots per position, at most :data:`MAX_POSITIONS`
positions, one layout for both epilogues (from the micro-kernel's registers, :mod:`.epilogue`,
and through the block buffer, :mod:`.bconv`); the slots are the ``AT_*`` names below.
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
    "ROW",
    "position_table",
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


@njit(cache=True)
def position_table(positions):
    """A table for a block of ``positions`` output positions (refused above
    :data:`MAX_POSITIONS`: the epilogues index it without bounds checks)."""
    if positions < 1 or positions > MAX_POSITIONS:
        raise ValueError("position_table: a block has 1 to 8 output positions")
    return np.empty(ROW * positions, np.int64)
