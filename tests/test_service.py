"""The service end to end: a real server subprocess, the real client, the numpy reference as
the oracle -- every mode, rank, layout, dtype and backend; streaming; backward; server info;
the asyncio client; the CLI; the README's example."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import poolclient
from poolclient import AsyncPoolClient, PoolClient, Spec
from poolserve import backends, reference
from poolserve.spec import DTYPES_BY_MODE, PoolSpec

from serving import ROOT, ServerProcess, backend_params
from strategies import arrays, assert_close, assert_matches_reference, examples, specs


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with PoolClient(server.target, timeout=30) as c:
        yield c


def _supported(backend: str, spec: PoolSpec, dtype: str, op: str = "forward"):
    """Skip (with the backend's reason) a case the backend does not run: the server would answer
    FAILED_PRECONDITION, as tested in test_service_errors."""
    cls = backends.load(backend)
    inst = cls(threads=1) if backend == "c" else cls(threads=1, providers=["CPUExecutionProvider"])
    check = getattr(inst, "supports_backward", inst.supports) if op == "backward" else inst.supports
    reason = check(spec, dtype)
    if reason:
        pytest.skip(reason)


def to_client_spec(spec: PoolSpec, backend: str | None) -> Spec:
    """The same spec through the client's PyTorch-style arguments (explicit ONNX pads)."""
    return Spec(spec.mode, kernel_size=spec.kernel_shape or None, stride=spec.strides or None,
                pads=spec.pads or None, padding=spec.auto_pad if spec.auto_pad != "NOTSET" else 0,
                dilation=spec.dilations or 1, ceil_mode=spec.ceil_mode, count_include_pad=spec.count_include_pad,
                p=spec.p if spec.mode == "lp" else None, return_indices=spec.return_indices,
                global_pool=spec.global_pool, backend=backend)


def check(spec: PoolSpec, x, got):
    y, ind = got if spec.return_indices else (got, None)
    assert_matches_reference(spec, x, y, ind)


# -- every backend x mode x dtype x rank x layout ----------------------------------------------------
CASES = [(mode, dtype, rank, layout) for mode, dtypes in DTYPES_BY_MODE.items() for dtype in dtypes
         for rank in (1, 2, 3) for layout in ("channels_first", "channels_last")]


def case_spec(mode: str, rank: int, layout: str) -> PoolSpec:
    """Overlapping windows with asymmetric padding, plus each mode's own parameter."""
    extra = {"max": {"return_indices": True}, "avg": {"count_include_pad": rank == 2}, "lp": {"p": 3.0}}[mode]
    return PoolSpec(mode, kernel_shape=(3,) * rank, strides=(2,) * rank, pads=(1,) * rank + (0,) * rank,
                    ceil_mode=rank == 1, layout=layout, **extra)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mode,dtype,rank,layout", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_pool_matches_reference(client, backend, mode, dtype, rank, layout):
    spec = case_spec(mode, rank, layout)
    spatial = {1: (11,), 2: (7, 6), 3: (5, 4, 5)}[rank]
    shape = (2, 3, *spatial) if layout == "channels_first" else (2, *spatial, 3)
    _supported(backend, spec, dtype)
    x = np.random.default_rng(rank).uniform(-50, 50, size=shape).astype(dtype)
    got = client.pool(x, to_client_spec(spec, backend), layout=layout)
    check(spec, x, got)


@examples(60)
@given(data=st.data(), case=specs())
def test_pool_matches_reference_hypothesis(server, data, case):
    """Broad sweep through the service with the server's policy choosing the backend."""
    spec, shape, dtype = case
    x = data.draw(arrays(shape, dtype))
    with PoolClient(server.target) as c:
        got = c.pool(x, to_client_spec(spec, None), layout=spec.layout)
    check(spec, x, got)


def test_global_and_auto_pad(client):
    x = np.random.default_rng(3).standard_normal((2, 4, 9, 7)).astype(np.float32)
    check(PoolSpec("avg", global_pool=True), x, client.pool(x, mode="avg", global_pool=True))
    spec = PoolSpec("max", (3, 2), strides=(2, 2), auto_pad="SAME_UPPER")
    check(spec, x, client.max_pool(x, (3, 2), stride=2, padding="same"))


def test_non_contiguous_and_big_endian_inputs(client):
    base = np.random.default_rng(4).standard_normal((2, 3, 12, 10))
    for x in (base[:, :, ::2, ::-1].astype(np.float32), base.astype(">f8")):
        check(PoolSpec("max", (2, 2)), np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")),
              client.max_pool(x, 2))


# -- backward ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mode", ["max", "avg", "lp"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_backward_matches_reference(client, backend, mode, dtype, layout):
    rng = np.random.default_rng(5)
    shape = (2, 3, 9, 8) if layout == "channels_first" else (2, 9, 8, 3)
    spec = PoolSpec(mode, (3, 3), strides=(2, 2), pads=(1, 1, 1, 0), layout=layout,
                    count_include_pad=mode == "avg", p=2.0)
    _supported(backend, spec, dtype, "backward")
    x = rng.standard_normal(shape).astype(dtype)
    g = spec.resolve(shape)
    dy = rng.uniform(-1, 1, g.output_shape).astype(dtype)
    cs = to_client_spec(spec, backend)
    kw = dict(kernel_size=3, stride=2, pads=(1, 1, 1, 0), backend=backend, layout=layout)
    if mode == "max":
        _, ind = client.pool(x, cs.replace(return_indices=True), layout=layout)
        dxr = reference.backward(spec, shape, dy, indices=ind)
        got = [client.max_pool_backward(dy, indices=ind, input_shape=shape, **kw),
               client.max_pool_backward(dy, input=x, **kw)]  # argmax recomputed from the input
    elif mode == "avg":
        dxr = reference.backward(spec, shape, dy)
        got = [client.avg_pool_backward(dy, shape, count_include_pad=True, **kw)]
    else:
        dxr = reference.backward(spec, shape, dy, x=x)
        got = [client.lp_pool_backward(dy, x, 2.0, **kw)]
    for dx in got:
        assert dx.shape == shape and dx.dtype == np.dtype(dtype)
        assert_close(dx, dxr, dtype, 9, scale=4.0)


# -- streaming ---------------------------------------------------------------------------------------
def test_pool_many_in_order(client):
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((1 + i % 2, 2, 6 + i, 5)).astype(np.float32) for i in range(12)]
    spec = PoolSpec("avg", (2, 2), strides=(1, 2))
    results = list(client.pool_many(xs, mode="avg", kernel_size=2, stride=(1, 2)))
    assert len(results) == len(xs)
    for x, y in zip(xs, results):
        check(spec, x, y)


def test_pool_many_mixed_specs_and_errors(client):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    items = [(x, Spec("max", 2, return_indices=True)), (x, Spec("lp", 3, 1, p=1.5)), (x[..., 0], Spec("avg", 3))]
    got = list(client.pool_many(items))
    check(PoolSpec("max", (2, 2), return_indices=True), x, got[0])
    check(PoolSpec("lp", (3, 3), strides=(1, 1), p=1.5), x, got[1])
    check(PoolSpec("avg", (3,)), x[..., 0], got[2])
    # the first bad request ends the stream with its status, naming which request it was
    with pytest.raises(poolclient.InvalidArgument, match=r"requests\[1\]"):
        list(client.pool_many([x, x[:, :, :1, :1]], mode="max", kernel_size=2))


def test_cancelled_stream_is_not_an_error(server, client):
    """A client that stops reading a stream midway cancels it: no error log, still serving."""
    x = np.ones((1, 2, 8, 8), np.float32)

    def endless():
        while True:
            yield x

    stream = client.pool_many(endless(), mode="max", kernel_size=2)
    for i, _ in zip(range(5), stream):
        pass
    stream.close()
    time.sleep(0.3)  # let the server see the cancellation (not a timing assertion)
    np.testing.assert_array_equal(client.max_pool(x, 2), np.ones((1, 2, 4, 4), np.float32))
    assert "unexpected exception" not in server.log()


def test_async_client(server):
    x = np.random.default_rng(8).standard_normal((2, 3, 10, 10)).astype(np.float32)

    async def main():
        async with AsyncPoolClient(server.target) as c:
            y = await c.max_pool(x, 2)
            ys = [y async for y in c.pool_many([x, x], mode="avg", kernel_size=2)]
            dx = await c.avg_pool_backward(np.ones((2, 3, 5, 5), np.float32), x.shape, 2)
            info = await c.server_info()
            with pytest.raises(poolclient.InvalidArgument):
                await c.max_pool(x, 20)
            return y, ys, dx, info

    y, ys, dx, info = asyncio.run(main())
    check(PoolSpec("max", (2, 2)), x, y)
    for yy in ys:
        check(PoolSpec("avg", (2, 2)), x, yy)
    np.testing.assert_allclose(dx, np.full(x.shape, 0.25, np.float32))
    assert info.version == poolclient.__version__


# -- server info -------------------------------------------------------------------------------------
def test_server_info(server, client):
    info = client.server_info()
    assert info.pid == server.proc.pid and info.workers == 1 and info.worker_index == 0
    assert info.default_backend == "auto"
    by_name = {b.name: b for b in info.backends}
    assert set(by_name) == set(backends.names())
    assert by_name["c"].available and by_name["c"].isa and by_name["c"].threads == 1
    assert list(by_name["c"].providers) == ["cpu"]
    for name, b in by_name.items():
        assert b.available or b.reason  # an unavailable backend says why
    from poolclient.tensors import NUMPY_BY_DTYPE
    dtypes = {poolclient._proto.poolserve.v1.pooling_pb2.Mode.Name(m.mode).lower():
              [NUMPY_BY_DTYPE[d] for d in m.dtypes] for m in info.dtypes}
    assert dtypes == {m: list(d) for m, d in DTYPES_BY_MODE.items()}
    assert info.limits.max_message_bytes >= 256 << 20 and info.limits.max_spatial_rank == 3
    assert info.worker_threads == 4 and info.cpu_count == os.cpu_count()


# -- the CLI and the README example -----------------------------------------------------------------
def test_cli_pool(server, tmp_path):
    x = np.random.default_rng(9).standard_normal((1, 2, 6, 6)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    cmd = [sys.executable, "-m", "poolclient.cli", "pool", str(tmp_path / "in.npy"), "--mode", "max", "-k", "2",
           "-s", "2", "-o", str(tmp_path / "out.npy"), "--indices", str(tmp_path / "ind.npy"),
           "--target", server.target]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    spec = PoolSpec("max", (2, 2), return_indices=True)
    check(spec, x, (np.load(tmp_path / "out.npy"), np.load(tmp_path / "ind.npy")))
    bad = subprocess.run(cmd[:7] + ["-k", "9"] + cmd[9:], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "spec.kernel_shape" in bad.stderr


QUICKSTART = ROOT / "client" / "examples" / "quickstart.py"


def test_readme_quickstart_runs(server):
    """The README's example is client/examples/quickstart.py, line for line, and it works."""
    code = QUICKSTART.read_text()
    readme = (ROOT / "README.md").read_text()
    assert code.strip() in readme
    assert "127.0.0.1:50051" in code  # the address `make serve` listens on
    out = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:50051", server.target)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y, _ = reference.forward(PoolSpec("max", (2, 2)), x)
    assert [float(v) for v in re.findall(r"[-\d.]+", out)] == y.ravel().tolist()


def test_metrics_logs_and_env_config():
    """Prometheus text on its own port; one structured log line per request at debug; flags
    from POOLSERVE_* environment variables."""
    import urllib.request

    env = {"POOLSERVE_MAX_ELEMENTS": "5000", "POOLSERVE_LOG_LEVEL": "debug", "POOLSERVE_LOG_FORMAT": "json"}
    with ServerProcess(metrics=True, env=env) as srv, PoolClient(srv.target) as c:
        assert c.server_info().limits.max_elements == 5000
        x = np.ones((1, 1, 4, 4), np.float32)
        # backend named: with auto the measured table decides, and this test is about the log line
        c.max_pool(x, 2, backend="c", metadata=[("x-request-id", "test-request-42")])
        with pytest.raises(poolclient.InvalidArgument):
            c.max_pool(x, 5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read().decode()
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    request = next(r for r in lines if r.get("request_id") == "test-request-42")
    assert request["level"] == "debug" and request["rpc"] == "Pool" and request["op"] == "max"
    assert request["backend"] == "c" and request["shape"] == "1x1x4x4" and request["status"] == "OK"
    assert request["bytes_in"] == 64 and request["bytes_out"] == 16 and request["us"] >= 0
    assert 'poolserve_requests_total{backend="c",code="OK",op="max",rpc="Pool"} 1.0' in text
    assert 'code="INVALID_ARGUMENT"' in text
    assert re.search(r'poolserve_received_bytes_total\{rpc="Pool"\} 64\.0', text)
    assert "poolserve_request_duration_seconds_bucket" in text and "poolserve_in_flight_requests" in text
