"""Card sizes: the memory a GPU is sold with ("the box") from what it reports. A leaf module: it imports nothing from
the course, so ``core.gpu`` (the GPU report) and ``core.defaults`` (the plans) both build on it without importing each
other."""

from __future__ import annotations

import math

#: Memory sizes cards are sold with ("the box"), in GB. A card reports a little less than its box in GiB (a 12 GB
#: RTX 4070 Ti: 12282 MiB = 11.99 GiB; WSL2 and the driver keep a bit more): :func:`card_box_gb` maps it back.
BOX_SIZES_GB = (2, 3, 4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 80, 94, 96, 141, 144, 180, 192)


def card_box_gb(reported_gib: float) -> float:
    """The memory size a card is sold with, from what it reports (GiB): 11.99 -> 12, 7.6 -> 8, 23.99 -> 24.

    Rounds up to the next box size when the card is within 10 % of it (drivers and WSL2 keep a few hundred MiB);
    otherwise down (a 14 GiB slice of a bigger card is not a 16 GB card). 0 stays 0 (no GPU).
    """
    if reported_gib <= 0:
        return 0.0
    for box in BOX_SIZES_GB:
        if box >= reported_gib - 1e-6:
            if box - reported_gib <= 0.1 * box:
                return float(box)
            smaller = [b for b in BOX_SIZES_GB if b < box]
            return float(smaller[-1]) if smaller else round(reported_gib, 2)
    return float(BOX_SIZES_GB[-1]) if reported_gib - BOX_SIZES_GB[-1] < 1 else float(math.floor(reported_gib))
