"""Overload: far more concurrent calls than --max-concurrent-rpcs.  The excess is refused at
once with RESOURCE_EXHAUSTED (clients can back off or go to another replica) instead of
queueing without end, the admitted calls finish normally, and the server serves again after.

The admitted calls are held in flight with the server's test hook (poolserve-test-sleep-ms,
enabled by POOLSERVE_TEST_HOOKS=1), so which calls are in flight does not depend on timing."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from poolclient._proto.poolserve.v1 import pooling_pb2 as pb
from poolclient._proto.poolserve.v1 import pooling_pb2_grpc as pb_grpc
from serverproc import ServerProc

LIMIT = 4
BURST = 48
HOLD_MS = 3000  # how long each admitted call stays in flight


def _request():
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    return pb.PoolRequest(input=pb.Tensor(dtype=pb.FLOAT32, shape=x.shape, data=x.tobytes()),
                          spec=pb.PoolSpec(mode=pb.MAX, kernel_shape=[2, 2]))


@pytest.fixture
def server(tmp_path):
    with ServerProc("--max-concurrent-rpcs", str(LIMIT), "--threads", "8", log_dir=tmp_path, name="overload",
                    env={"POOLSERVE_TEST_HOOKS": "1"}) as s:
        yield s


def _outcome(future):
    try:
        future.result()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_excess_calls_are_refused_at_once_and_the_server_recovers(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.PoolingStub(channel)
        hold = (("poolserve-test-sleep-ms", str(HOLD_MS)),)
        # futures: all BURST calls are on the wire at once, without a thread each
        futures = [stub.Pool.future(_request(), timeout=60, metadata=hold) for _ in range(BURST)]

        # the refusals arrive while the admitted calls are still held: nothing waited in a queue
        refused = []
        wait_until = time.monotonic() + HOLD_MS / 1000 / 2
        for f in futures:
            try:
                f.result(timeout=max(0.0, wait_until - time.monotonic()))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                refused.append(f)
            except grpc.FutureTimeoutError:
                pass  # an admitted call, still sleeping
        held = [f for f in futures if f not in refused]
        assert len(refused) >= BURST - LIMIT and len(held) <= LIMIT, (len(refused), len(held))
        assert held, "some calls must have been admitted"
        assert not any(f.done() for f in held)  # still in flight when every refusal was in

        # the admitted calls complete normally
        assert [_outcome(f) for f in held] == [grpc.StatusCode.OK] * len(held)

        # recovered: a full set of concurrent calls is served, then more
        again = [stub.Pool.future(_request(), timeout=60) for _ in range(LIMIT)]
        assert [_outcome(f) for f in again] == [grpc.StatusCode.OK] * LIMIT
        for _ in range(20):
            assert stub.Pool(_request(), timeout=60).output.shape == [2, 3, 4, 4]
    assert server.alive()
