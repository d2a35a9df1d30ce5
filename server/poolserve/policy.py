"""The ``auto`` backend policy: per spec class, dtype and input-size bucket, the backend that
measured fastest on this kind of machine.

The table is a JSON file written by ``bench/backend_policy.py`` (``make bench-policy``, part of
``make bench``), which times every available backend on each key in one process, one after the
other.  The server loads it at start-up (``--backend-policy``; default: the file shipped inside
the package, ``poolserve/backend_policy.json``) and shows it in GetServerInfo.  A table rather
than a calibration at start-up: the same answer on every start of every worker, no seconds of
timing before a server is ready, and a file one can read and diff.

A key is (mode, window, dtype, bucket):
  window  "2x2/s2"  kernel 2 and stride 2 on every spatial axis, no padding, no dilation
          "global"  global_pool
          "s1"      stride 1 on every spatial axis (measured on 3x3, stride 1, padding 1): the C
                    kernels' general rows path, where ONNX Runtime can be the faster one
          "other"   any other window (measured on 3x3, stride 2, padding 1)
  bucket  the input's byte size against the table's ``bucket_bounds``: bucket i holds sizes
          below bounds[i] (and from bounds[i-1]); the last bucket has no upper bound.
A request whose key the table lacks, or whose preferred backend is unavailable or cannot run it,
gets the registry order (c, then onnx), as before.  Both backends compute the same function
(max exactly, avg and lp to the tolerance of their summation order), so which one the policy
picks changes the time, not the answer; tests/test_policy.py checks that.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path

from .spec import PoolSpec

DEFAULT_PATH = Path(__file__).resolve().parent / "backend_policy.json"
DEFAULT_BUCKET_BOUNDS = (64 << 10, 1 << 20, 16 << 20)  # <64 KiB, <1 MiB, <16 MiB, larger
WINDOWS = ("2x2/s2", "global", "s1", "other")


def window_class(spec: PoolSpec) -> str:
    if spec.global_pool:
        return "global"
    k = spec.kernel_shape
    if (k and all(v == 2 for v in k) and all(v == 2 for v in (spec.strides or k))
            and not any(spec.pads or ()) and spec.auto_pad in ("NOTSET", "VALID")
            and all(v == 1 for v in (spec.dilations or (1,)))):
        return "2x2/s2"
    if k and all(v == 1 for v in (spec.strides or k)):
        return "s1"
    return "other"


@dataclass(frozen=True)
class Entry:
    mode: str
    window: str
    dtype: str
    bucket: int
    backend: str                                  # what auto picks
    micros: dict = field(default_factory=dict)    # backend -> measured median, microseconds


@dataclass
class PolicyTable:
    entries: dict = field(default_factory=dict)   # (mode, window, dtype, bucket) -> Entry
    bucket_bounds: tuple = DEFAULT_BUCKET_BOUNDS
    source: str = "none"                          # where the table came from, and when

    @classmethod
    def load(cls, path: str | Path | None) -> "PolicyTable":
        """The table in ``path``; an empty one (registry order everywhere) when it does not
        exist.  A file that exists and does not parse is an error: the server must not start on
        a policy it silently ignored."""
        path = Path(path) if path else DEFAULT_PATH
        if not path.exists():
            return cls(source=f"none ({path} not found): registry order")
        try:
            doc = json.loads(path.read_text())
            bounds = tuple(int(b) for b in doc.get("bucket_bounds", DEFAULT_BUCKET_BOUNDS))
            if list(bounds) != sorted(set(bounds)) or any(b <= 0 for b in bounds):
                raise ValueError(f"bucket_bounds {list(bounds)} must be positive and increasing")
            entries = {}
            for e in doc["entries"]:
                entry = Entry(str(e["mode"]), str(e["window"]), str(e["dtype"]), int(e["bucket"]),
                              str(e["backend"]), {str(k): float(v) for k, v in e.get("micros", {}).items()})
                if entry.window not in WINDOWS or not 0 <= entry.bucket <= len(bounds):
                    raise ValueError(f"entry {e}: window must be one of {WINDOWS}, bucket 0..{len(bounds)}")
                entries[(entry.mode, entry.window, entry.dtype, entry.bucket)] = entry
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"backend policy {path}: {e}") from None
        return cls(entries, bounds, f"{path} ({doc.get('date_utc', 'undated')}, {doc.get('machine', '?')})")

    def bucket_of(self, nbytes: int) -> int:
        return bisect.bisect_right(self.bucket_bounds, nbytes)

    def preferred(self, spec: PoolSpec, dtype: str, nbytes: int) -> str | None:
        e = self.entries.get((spec.mode, window_class(spec), dtype, self.bucket_of(nbytes)))
        return e.backend if e else None

    def describe(self) -> list[dict]:
        out = []
        for (mode, window, dtype, b), e in sorted(self.entries.items()):
            lo = self.bucket_bounds[b - 1] if b > 0 else 0
            hi = self.bucket_bounds[b] if b < len(self.bucket_bounds) else 0
            out.append({"mode": mode, "window": window, "dtype": dtype, "min_bytes": lo, "max_bytes": hi,
                        "backend": e.backend, "micros": dict(e.micros)})
        return out
