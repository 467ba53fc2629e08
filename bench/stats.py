"""Summary statistics for the benchmarks: percentiles and a fixed set of figures from one list of samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Return the `fraction` quantile of `samples`, interpolating linearly between the two nearest ranks.

    This is the "inclusive" method of `statistics.quantiles` and numpy's default: the minimum is the 0
    quantile and the maximum is the 1 quantile, so a p95 never exceeds the largest sample.
    """
    if not samples:
        raise ValueError("percentile of no samples: give at least one sample")
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise ValueError(f"invalid fraction {fraction}; use a number from 0 to 1, such as 0.95")

    ordered = sorted(samples)
    rank = fraction * (len(ordered) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    weight = rank - below
    return ordered[below] + (ordered[above] - ordered[below]) * weight


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Return the minimum, median, 95th percentile and maximum of `samples`."""
    return {
        "min": percentile(samples, 0.0),
        "median": percentile(samples, 0.5),
        "p95": percentile(samples, 0.95),
        "max": percentile(samples, 1.0),
    }
