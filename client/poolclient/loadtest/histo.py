"""Latency histograms: HDR histograms in microseconds, merged across worker processes.

An HDR histogram keeps every value to 3 significant digits in fixed memory, so the tail
(p99.9, max) of a million requests costs no more than that of a hundred, and histograms from
several processes merge exactly (bucket counts add).  Workers ship them to the parent in
HdrHistogram's compressed, base64 wire form, which is also what the JSON report stores so a
later `--compare` could re-derive any percentile.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: any call deadline we allow is shorter
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_seconds(h: HdrHistogram, seconds: float) -> None:
    """Record a duration given in seconds; clamped into the trackable range instead of being
    dropped (HdrHistogram silently ignores out-of-range values, which would lose a count)."""
    us = int(seconds * 1e6 + 0.5)
    h.record_value(min(max(us, LOWEST_US), HIGHEST_US))


def encode(h: HdrHistogram) -> str:
    return h.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


def merge(encoded: list[str]) -> HdrHistogram:
    total = new()
    for text in encoded:
        total.add(decode(text))
    return total


def summary_ms(h: HdrHistogram) -> dict:
    """count, min, mean, p50, p90, p99, p99.9, max in milliseconds (None when empty)."""
    n = h.get_total_count()
    out = {"count": n}
    keys = ["min", "mean"] + [f"p{p:g}" for p in PERCENTILES] + ["max"]
    if n == 0:
        out.update({k: None for k in keys})
        return out
    out["min"] = h.get_min_value() / 1e3
    out["mean"] = h.get_mean_value() / 1e3
    for p in PERCENTILES:
        out[f"p{p:g}"] = h.get_value_at_percentile(p) / 1e3
    out["max"] = h.get_max_value() / 1e3
    return out
