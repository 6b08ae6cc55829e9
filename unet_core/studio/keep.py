"""How much of its results a browser session keeps: the Segment page keeps each image's labels,
objects, probability map and files for the session (options that need no network pass are
applied to them at once), within a memory budget; past it, the oldest results are let go first.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence

from ..io import available_memory

#: Environment variable: the most gigabytes one session's results may hold.
RESULTS_BUDGET_ENV = "UNET_STUDIO_RESULTS_GB"
#: Without the variable: this share of the memory available when asked, at most 4 GB (several
#: sessions of one server share the machine).
RESULTS_SHARE = 0.25
RESULTS_MAX_BYTES = 4 << 30


def results_budget() -> int:
    """Bytes one session's kept results may take (:data:`RESULTS_BUDGET_ENV`, else a share of the
    available memory)."""
    text = os.environ.get(RESULTS_BUDGET_ENV, "").strip()
    if text:
        try:
            return max(0, int(float(text) * (1 << 30)))
        except ValueError:
            pass  # a mistyped variable: the default budget, as if unset
    available = available_memory()
    return min(RESULTS_MAX_BYTES, int(RESULTS_SHARE * available)) if available else RESULTS_MAX_BYTES


def to_let_go(sizes: Sequence[tuple[Hashable, int]], budget: int) -> list[Hashable]:
    """The keys of the results to let go, oldest first, so that the rest fit in ``budget`` bytes.

    Args:
        sizes: (key, bytes) of every kept result, oldest first.
        budget: the bytes they may take together. The newest result is always kept, even alone
            over the budget: the user is looking at it.
    """
    total = sum(size for _, size in sizes)
    dropped = []
    for key, size in sizes[:-1]:
        if total <= budget:
            break
        dropped.append(key)
        total -= size
    return dropped
