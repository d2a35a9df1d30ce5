"""The `auto` backend policy: the table loads and shows in GetServerInfo, auto runs the backend
the table names for each (mode, window, dtype, size bucket), falls back in registry order where
that backend cannot run, and -- whichever it picks -- the answer is the same."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from poolclient import PoolClient
from poolclient._proto.poolserve.v1 import pooling_pb2 as pb
from poolserve import backends, reference
from poolserve.dispatch import Dispatcher
from poolserve.policy import DEFAULT_PATH, PolicyTable, window_class
from poolserve.spec import DTYPES_BY_MODE, PoolSpec

from serving import ROOT, ServerProcess
from strategies import assert_close, window_size


def available(name: str) -> bool:
    try:
        backends.load(name)
        return True
    except backends.Unsupported:
        return False


WINDOWS = {"2x2/s2": dict(kernel_shape=(2, 2), strides=(2, 2)),
           "s1": dict(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)),
           "other": dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
           "global": dict(global_pool=True)}
# small bucket bounds so that every bucket is reached by small test tensors
BOUNDS = [2048, 8192]
SIZES = [(1, 2, 8, 8), (1, 4, 16, 16), (2, 8, 16, 16)]  # one per bucket (float64 still fits the last)


def write_table(path, pick) -> dict:
    """A table naming ``pick(i)`` for the i-th key; returns its entries by key."""
    entries, i = [], 0
    for mode, dtypes in DTYPES_BY_MODE.items():
        for window in WINDOWS:
            for dtype in dtypes:
                for bucket in range(len(BOUNDS) + 1):
                    entries.append({"mode": mode, "window": window, "dtype": dtype, "bucket": bucket,
                                    "backend": pick(i), "micros": {"c": 1.0 + i, "onnx": 2.0}})
                    i += 1
    path.write_text(json.dumps({"date_utc": "test", "machine": "test", "bucket_bounds": BOUNDS,
                                "entries": entries}))
    return {(e["mode"], e["window"], e["dtype"], e["bucket"]): e["backend"] for e in entries}


def bucket_of(nbytes: int) -> int:
    return sum(nbytes >= b for b in BOUNDS)


def test_window_classes():
    assert window_class(PoolSpec("max", (2, 2))) == "2x2/s2"
    assert window_class(PoolSpec("avg", (2, 2, 2), strides=(2, 2, 2))) == "2x2/s2"
    assert window_class(PoolSpec("max", (2, 2), pads=(1, 1, 1, 1))) == "other"
    assert window_class(PoolSpec("max", (2, 2), strides=(1, 1))) == "s1"
    assert window_class(PoolSpec("avg", (5, 5), strides=(1, 1), pads=(2, 2, 2, 2))) == "s1"
    assert window_class(PoolSpec("max", (3, 3), strides=(1, 2))) == "other"
    assert window_class(PoolSpec("max", (3, 3), strides=(2, 2))) == "other"
    assert window_class(PoolSpec("lp", global_pool=True)) == "global"


def test_table_files(tmp_path):
    assert PolicyTable.load(tmp_path / "absent.json").entries == {}  # registry order
    bad = tmp_path / "bad.json"
    for text in ("{", '{"entries": [{"mode": "max"}]}', '{"bucket_bounds": [5, 1], "entries": []}',
                 '{"entries": [{"mode": "max", "window": "5x5", "dtype": "float32", "bucket": 0, "backend": "c"}]}'):
        bad.write_text(text)
        with pytest.raises(ValueError, match="backend policy"):
            PolicyTable.load(bad)
    t = PolicyTable.load(DEFAULT_PATH)  # the shipped table loads and names registered backends
    assert t.entries, "the package ships a measured table"
    assert {e.backend for e in t.entries.values()} <= set(backends.names())


def test_pick_that_cannot_run_falls_back_in_registry_order(tmp_path):
    """A table naming a backend that is unavailable or cannot run the request: the next one runs it."""
    missing = next((n for n in backends.names() if not available(n)), None)
    path = tmp_path / "t.json"
    write_table(path, lambda i: missing or "onnx")
    d = Dispatcher(kernel_threads=1, policy=PolicyTable.load(path))
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32)
    r = d.forward(PoolSpec("max", (2, 2), return_indices=True), x)
    np.testing.assert_array_equal(r.output, reference.forward(PoolSpec("max", (2, 2)), x)[0])
    if missing:
        assert r.backend != missing


@pytest.mark.skipif(not (available("c") and available("onnx")), reason="needs both the c and onnx backends")
@pytest.mark.parametrize("parity", [0, 1])
def test_auto_runs_the_tables_pick_and_the_answer_is_the_same(tmp_path, parity):
    """Every key of the table, each pick in turn (parity flips them): auto runs the named backend
    where it can, and its answer equals the reference and the other backend's."""
    path = tmp_path / "t.json"
    picks = write_table(path, lambda i: ("c", "onnx")[(i + parity) % 2])
    d = Dispatcher(kernel_threads=1, policy=PolicyTable.load(path))
    rng = np.random.default_rng(parity)
    ran = {"c": 0, "onnx": 0}
    for (mode, window, dtype, bucket), pick in picks.items():
        spec = PoolSpec(mode, p=3.0, **WINDOWS[window])
        shape = SIZES[bucket]
        x = (rng.uniform(-50, 50, shape) if np.dtype(dtype).kind == "f"
             else rng.integers(0 if dtype == "uint8" else -100, 100, shape)).astype(dtype)
        key_bucket = bucket_of(x.nbytes)  # the sizes suit float32; other dtypes land where their bytes say
        r = d.forward(spec, x)
        want = picks[(mode, window, dtype, key_bucket)]
        others = [n for n in ("c", "onnx") if n != want]
        can = d.slots[want].instances["cpu"].supports(spec, dtype) is None
        assert r.backend == (want if can else others[0]), (mode, window, dtype, key_bucket)
        ran[r.backend] += 1
        yr = reference.forward(spec, x)[0]
        for out in (r.output, *[d.forward(spec, x, backend=n).output for n in others
                                if d.slots[n].instances["cpu"].supports(spec, dtype) is None]):
            if mode == "max":
                np.testing.assert_array_equal(out, yr)
            else:
                assert_close(out, yr, dtype, window_size(spec, x.shape))
    assert ran["c"] and ran["onnx"]


def test_server_shows_the_table_and_follows_it(tmp_path):
    path = tmp_path / "t.json"
    picks = write_table(path, lambda i: "c")
    with ServerProcess("--backend-policy", str(path)) as srv, PoolClient(srv.target) as c:
        info = c.server_info()
        assert info.default_backend == "auto" and str(path) in info.policy_source
        assert len(info.policy) == len(picks)
        e = info.policy[0]
        assert e.window in WINDOWS and e.backend == "c" and e.micros["onnx"] == 2.0
        assert e.min_bytes == 0 and e.max_bytes == BOUNDS[0]
        x = np.ones((1, 2, 8, 8), np.float32)
        np.testing.assert_array_equal(c.max_pool(x, 2), np.ones((1, 2, 4, 4), np.float32))


def test_server_refuses_a_broken_table(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"entries": [{"mode": "max"}]}')
    p = subprocess.run([sys.executable, "-m", "poolserve.app", "serve", "--port", "0", "--metrics-port", "0",
                        "--backend-policy", str(bad)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "backend policy" in (p.stdout + p.stderr)
