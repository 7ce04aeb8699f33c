"""Side-by-side latency measurement.

Backends are timed *interleaved* (one call of each per round, rotating the order) rather than one
after another, so a noisy neighbour, thermal throttling or a frequency change affects all of them
alike - on a shared 2-core CI box this matters more than any single number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from tqdm import tqdm


def measure_interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                        progress: bool = True) -> dict[str, dict[str, float]]:
    """Median/min/p90 wall time in milliseconds of each zero-argument callable."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(repeats), desc="latency", disable=not progress):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: summarize(values) for name, values in samples.items()}


def summarize(values_ms: list[float]) -> dict[str, float]:
    """Median, min, p90 and count of a list of millisecond timings."""
    ordered = sorted(values_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered), "min_ms": ordered[0], "p90_ms": p90,
            "n": len(ordered)}
