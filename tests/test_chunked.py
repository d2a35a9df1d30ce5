"""PoolChunked: big tensors as a stream of chunks.  A real server, the real client, the numpy
reference as the oracle; bad chunk streams get INVALID_ARGUMENT (or RESOURCE_EXHAUSTED over the
limits, refused from the header alone) and the server keeps serving after each."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

import poolclient
from poolclient import AsyncPoolClient, PoolClient, Spec
from poolclient._proto.poolserve.v1 import pooling_pb2 as pb
from poolclient._proto.poolserve.v1 import pooling_pb2_grpc as pb_grpc
from poolclient.tensors import tensor_header
from poolserve import reference
from poolserve.spec import PoolSpec

from serving import ServerProcess, health_status
from strategies import assert_matches_reference

MAX_ELEMENTS = 1 << 20
MAX_MESSAGE = 2 << 20  # bytes: below what MAX_ELEMENTS float64s take, to test both limits


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--max-elements", str(MAX_ELEMENTS), "--max-message-bytes", str(MAX_MESSAGE)) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as ch:
        yield pb_grpc.PoolingStub(ch)


def check(spec: PoolSpec, x, got):
    y, ind = got if spec.return_indices else (got, None)
    assert_matches_reference(spec, x, y, ind)


# threshold 4000 bytes: inputs of 2 x 3 x h x w float32 cross it as h grows (h = 13: 3744, 14: 4032)
@pytest.mark.parametrize("h", [12, 13, 14, 15, 40])
@pytest.mark.parametrize("mode", ["max", "avg", "lp"])
def test_results_equal_across_threshold(server, h, mode):
    x = np.random.default_rng(h).uniform(-9, 9, (2, 3, h, 12)).astype(np.float32)
    spec = PoolSpec(mode, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=mode == "max", p=3.0)
    cs = Spec(mode, 3, 2, 1, return_indices=mode == "max", p=3.0 if mode == "lp" else None)
    with PoolClient(server.target, chunk_threshold=4000, chunk_bytes=1000) as c:
        check(spec, x, c.pool(x, cs))
    with PoolClient(server.target, chunk_threshold=None) as c:  # always unary: the same answer
        check(spec, x, c.pool(x, cs))


@pytest.mark.parametrize("dtype", ["float16", "float64", "int8", "uint8"])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 4096, 1 << 20])
def test_chunk_sizes_that_split_elements(server, dtype, chunk_bytes):
    """Chunks need not hold whole elements; the channels-last layout goes through as well."""
    x = (np.random.default_rng(1).uniform(-100, 100, (1, 9, 7, 5)).astype(dtype) if chunk_bytes > 1
         else np.arange(30, dtype=dtype).reshape(1, 3, 2, 5))
    spec = PoolSpec("max", (2, 2), layout="channels_last", return_indices=True)
    with PoolClient(server.target, chunk_threshold=0, chunk_bytes=chunk_bytes) as c:
        check(spec, x, c.pool(x, Spec("max", 2, return_indices=True), layout="channels_last"))


def test_async_client_chunked(server):
    import asyncio

    x = np.random.default_rng(2).standard_normal((2, 3, 30, 30)).astype(np.float32)

    async def main():
        async with AsyncPoolClient(server.target, chunk_threshold=1, chunk_bytes=999) as c:
            return await c.avg_pool(x, 2)

    check(PoolSpec("avg", (2, 2)), x, asyncio.run(main()))


def test_client_errors_are_typed(server):
    x = np.ones((1, 1, 3, 3), np.float32)
    with PoolClient(server.target, chunk_threshold=0) as c:
        with pytest.raises(poolclient.InvalidArgument, match="spec.kernel_shape"):
            c.max_pool(x, 5)


# -- bad chunk streams, straight through the stub ---------------------------------------------------
X = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
SPEC = pb.PoolSpec(mode=pb.MAX, kernel_shape=[2, 2])


def header(shape=X.shape, dtype=pb.FLOAT32, spec=SPEC, data=b""):
    t = tensor_header(X)
    del t.shape[:]
    t.shape.extend(shape)
    t.dtype, t.data = dtype, data
    return pb.PoolChunkedRequest(header=pb.PoolRequest(input=t, spec=spec))


def chunk(b: bytes):
    return pb.PoolChunkedRequest(chunk=b)


DATA = X.tobytes()
BAD_STREAMS = {
    "empty stream": ([], grpc.StatusCode.INVALID_ARGUMENT, "header"),
    "chunk before the header": ([chunk(DATA)], grpc.StatusCode.INVALID_ARGUMENT, "header"),
    "more bytes than declared": ([header(), chunk(DATA), chunk(b"\0")], grpc.StatusCode.INVALID_ARGUMENT,
                                 r"messages\[2\].chunk.*more than the 1536 bytes"),
    "one big chunk too many": ([header(), chunk(DATA + DATA)], grpc.StatusCode.INVALID_ARGUMENT,
                               r"messages\[1\].chunk"),
    "fewer bytes than declared": ([header(), chunk(DATA[:-1])], grpc.StatusCode.INVALID_ARGUMENT,
                                  r"input.data.*1535 bytes.*ended before"),
    "no data at all": ([header()], grpc.StatusCode.INVALID_ARGUMENT, r"input.data.*0 bytes"),
    "data in the header": ([header(data=DATA)], grpc.StatusCode.INVALID_ARGUMENT, "header.input.data"),
    "second header": ([header(), chunk(DATA[:8]), header()], grpc.StatusCode.INVALID_ARGUMENT,
                      r"messages\[2\].header"),
    "no spec": ([pb.PoolChunkedRequest(header=pb.PoolRequest(input=tensor_header(X)))],
                grpc.StatusCode.INVALID_ARGUMENT, "header.spec"),
    "bad spec": ([header(spec=pb.PoolSpec(mode=pb.MAX, kernel_shape=[9, 9])), chunk(DATA)],
                 grpc.StatusCode.INVALID_ARGUMENT, "spec.kernel_shape"),
    "bad dtype": ([header(dtype=pb.BFLOAT16)], grpc.StatusCode.INVALID_ARGUMENT, "input.dtype"),
    "zero dimension": ([header(shape=(2, 0, 8, 8))], grpc.StatusCode.INVALID_ARGUMENT, "input.shape"),
    "unknown backend": ([header(spec=pb.PoolSpec(mode=pb.MAX, kernel_shape=[2, 2], backend="gpu9"))],
                        grpc.StatusCode.INVALID_ARGUMENT, "spec.backend"),
    # refused from the header alone: the server allocates nothing for a claimed size over its limits
    "over the element limit": ([header(shape=(1 << 20, 1 << 20, 1 << 20, 1 << 20))],
                               grpc.StatusCode.RESOURCE_EXHAUSTED, "input.shape"),
    "over the message limit": ([header(shape=(1, 1, 1024, 1024), dtype=pb.FLOAT64)],
                               grpc.StatusCode.RESOURCE_EXHAUSTED, "message limit"),
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_bad_chunk_streams(server, stub, name):
    messages, code, pattern = BAD_STREAMS[name]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.PoolChunked(iter(messages), timeout=30))
    assert e.value.code() == code, e.value.details()
    assert __import__("re").search(pattern, e.value.details()), e.value.details()
    # still serving, and a good stream works
    assert health_status(server.target) == "SERVING"
    replies = list(stub.PoolChunked(iter([header(), chunk(DATA[:100]), chunk(DATA[100:])]), timeout=30))
    assert replies[0].HasField("header") and replies[0].header.backend
    y = np.frombuffer(b"".join(r.chunk for r in replies[1:]), np.float32).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(y, reference.forward(PoolSpec("max", (2, 2)), X)[0])


def test_header_checks_happen_before_the_data(server, stub):
    """A bad header is answered without waiting for (or reading) the data that would follow."""
    sent = []

    def messages():
        yield header(spec=pb.PoolSpec(mode=pb.MAX, kernel_shape=[9, 9]))
        for i in range(1000):  # bounded; the server stops reading after the header
            sent.append(i)
            yield chunk(DATA)

    with pytest.raises(grpc.RpcError) as e:
        list(stub.PoolChunked(messages(), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(sent) < 1000
    assert "unexpected exception" not in server.log()


def test_response_chunks_never_mix_output_and_indices(server, stub):
    x = np.random.default_rng(3).standard_normal((1, 4, 512, 256)).astype(np.float32)  # 2 MiB in
    spec = pb.PoolSpec(mode=pb.MAX, kernel_shape=[2, 2], return_indices=True)
    reqs = [pb.PoolChunkedRequest(header=pb.PoolRequest(input=tensor_header(x), spec=spec))]
    reqs += [chunk(x.tobytes()[i:i + (1 << 19)]) for i in range(0, x.nbytes, 1 << 19)]
    # output 512 KiB, then indices 1 MiB: with 1 MiB response chunks, a chunk that mixed them would
    # end at 1 MiB, not at 512 KiB
    replies = list(stub.PoolChunked(iter(reqs), timeout=60))
    out_bytes = math.prod(replies[0].header.output.shape) * 4
    sizes = [len(r.chunk) for r in replies[1:]]
    cut = np.cumsum(sizes)
    assert out_bytes in cut  # a chunk boundary falls exactly between output and indices
    assert cut[-1] == out_bytes * 3
