"""Bad requests, table-driven: each gets its status code and a message naming the field, and
the server keeps serving (health SERVING, and a good request succeeds) after every one."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import poolclient
from poolclient import PoolClient
from poolclient._proto.poolserve.v1 import pooling_pb2 as pb
from poolclient._proto.poolserve.v1 import pooling_pb2_grpc as pb_grpc
from poolclient.errors import from_rpc_error
from poolclient.tensors import to_tensor
from poolserve import backends, reference
from poolserve.spec import PoolSpec

from serving import ServerProcess, health_status, in_flight, wait_for

MAX_ELEMENTS = 1 << 17
MAX_MESSAGE = 1 << 20
OK, INVALID, EXHAUSTED, PRECONDITION, DEADLINE, INTERNAL = (
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--max-elements", str(MAX_ELEMENTS), "--max-message-bytes", str(MAX_MESSAGE)) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    # the client's own limit is above the server's, so the server is the one that refuses
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield pb_grpc.PoolingStub(ch)


X = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)


def tensor(x=X, **fields) -> pb.Tensor:
    t = to_tensor(x)
    for k, v in fields.items():
        if k == "shape":
            del t.shape[:]
            t.shape.extend(v)
        else:
            setattr(t, k, v)
    return t


def spec(**fields) -> pb.PoolSpec:
    return pb.PoolSpec(**{"mode": pb.MAX, "kernel_shape": [2, 2], **fields})


def pool(x=None, **spec_fields):
    return ("Pool", pb.PoolRequest(input=x if x is not None else tensor(), spec=spec(**spec_fields)), ())


def backward(**fields):
    return ("PoolBackward", pb.PoolBackwardRequest(**fields), ())


DY = np.ones((2, 3, 4, 4), np.float32)

# name -> (request, expected status, text the message must contain: the field)
CASES = {
    "wrong byte length": (pool(tensor(data=X.tobytes()[:-4])), INVALID, "input.data"),
    "unknown dtype": (pool(tensor(dtype=42)), INVALID, "input.dtype"),
    "unspecified dtype": (pool(tensor(dtype=pb.DTYPE_UNSPECIFIED)), INVALID, "input.dtype"),
    "bfloat16 (no backend takes it)": (pool(tensor(dtype=pb.BFLOAT16)), INVALID, "input.dtype"),
    "dtype the mode does not take": (pool(tensor(X.astype(np.int8)), mode=pb.AVG), INVALID, "input.dtype"),
    "shape with a zero": (pool(tensor(shape=[2, 3, 0, 8], data=b"")), INVALID, "input.shape"),
    "shape with a negative": (pool(tensor(shape=[2, 3, -8, -8])), INVALID, "input.shape"),
    "no spatial axis": (pool(tensor(X[:, :, 0, 0]), kernel_shape=[]), INVALID, "spec.kernel_shape"),
    "4 spatial axes": (pool(tensor(X.reshape(2, 3, 2, 4, 2, 4)), kernel_shape=[1, 1, 1, 1]), INVALID,
                       "spec.kernel_shape"),
    "kernel rank differs from the input's": (pool(kernel_shape=[2, 2, 2]), INVALID, "input.shape"),
    "kernel larger than the input": (pool(kernel_shape=[9, 2]), INVALID, "spec.kernel_shape"),
    "stride 0": (pool(strides=[0, 1]), INVALID, "spec.strides"),
    "pads >= kernel": (pool(pads=[2, 0, 0, 0]), INVALID, "spec.pads"),
    "indices asked for avg": (pool(mode=pb.AVG, return_indices=True), INVALID, "spec.return_indices"),
    "mode unspecified": (pool(mode=pb.MODE_UNSPECIFIED), INVALID, "spec.mode"),
    "lp with p <= 0": (pool(mode=pb.LP, p=-1.0), INVALID, "spec.p"),
    "no spec": (("Pool", pb.PoolRequest(input=tensor()), ()), INVALID, "spec"),
    "no input": (("Pool", pb.PoolRequest(spec=spec()), ()), INVALID, "input"),
    "unknown backend": (pool(backend="tpu"), INVALID, "spec.backend"),
    "CUDA where absent": (pool(provider="cuda"), PRECONDITION, "cuda"),
    "CUDA asked of the C backend": (pool(backend="c", provider="cuda"), PRECONDITION, "cuda"),
    "over the element limit": (pool(tensor(np.zeros((1, 1, 400, 400), np.float32))), EXHAUSTED, "input.shape"),
    "message over the size limit": (pool(tensor(np.zeros((1, 1, 1024, 1024), np.int8))), EXHAUSTED,
                                    "larger than max"),
    "deadline too short": (("Pool", pb.PoolRequest(input=tensor(), spec=spec()),
                            (("poolserve-test-sleep-ms", "400"),)), DEADLINE, ""),
    "unexpected exception": (("Pool", pb.PoolRequest(input=tensor(), spec=spec()),
                              (("poolserve-test-raise", "1"),)), INTERNAL, "request id"),
    # backward
    "backward: grad of the wrong shape": (backward(spec=spec(mode=pb.AVG), input_shape=X.shape,
                                                   grad_output=tensor(DY[:, :, :3])), INVALID, "grad_output.shape"),
    "backward: integer grad": (backward(spec=spec(mode=pb.AVG), input_shape=X.shape,
                                        grad_output=tensor(DY.astype(np.int8))), INVALID, "grad_output.dtype"),
    "backward: max without indices or input": (backward(spec=spec(), input_shape=X.shape,
                                                        grad_output=tensor(DY)), INVALID, "indices"),
    "backward: index outside its plane": (backward(spec=spec(), input_shape=X.shape, grad_output=tensor(DY),
                                                   indices=tensor(np.full(DY.shape, 10**6, np.int64))),
                                          INVALID, "indices"),
    "backward: lp without the input": (backward(spec=spec(mode=pb.LP), input_shape=X.shape,
                                                grad_output=tensor(DY)), INVALID, "input"),
    "backward: no input_shape": (backward(spec=spec(mode=pb.AVG), grad_output=tensor(DY)), INVALID,
                                 "input_shape"),
    "backward: gradient over the message limit": (backward(spec=spec(mode=pb.AVG, kernel_shape=[64, 64]),
                                                           input_shape=[1, 2, 256, 256],  # 2^17 float64s
                                                           grad_output=tensor(np.ones((1, 2, 4, 4), np.float64))),
                                                  EXHAUSTED, "input_shape"),
    "backward: input_shape over the element limit": (backward(spec=spec(mode=pb.AVG), input_shape=[2, 3, 800, 800],
                                                              grad_output=tensor(DY)), EXHAUSTED, "input_shape"),
}


def onnx_case():
    """Asking for the onnx backend where it cannot load: FAILED_PRECONDITION, not a fallback."""
    try:
        backends.load("onnx")
    except backends.Unsupported:
        return {"onnx backend where absent": (pool(backend="onnx"), PRECONDITION, "onnx")}
    return {}


CASES.update(onnx_case())


def cuda_here() -> bool:
    for name in backends.names():
        try:
            cls = backends.load(name)
        except backends.Unsupported:
            continue
        if any("cuda" in p.lower() for p in getattr(cls, "available_providers", lambda: ())()):
            return True
    return False


def call(stub, method, request, metadata):
    try:
        getattr(stub, method)(request, timeout=0.1 if metadata and "sleep" in metadata[0][0] else 10,
                              metadata=metadata)
    except grpc.RpcError as e:
        return from_rpc_error(e)
    return None


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request(server, stub, name):
    (method, request, metadata), code, text = CASES[name]
    if name == "CUDA where absent" and cuda_here():
        pytest.skip("CUDA is present here")
    err = call(stub, method, request, metadata)
    assert err is not None, f"{name}: the server accepted it"
    assert err.code == code, f"{name}: {err}"
    assert text in err.details, f"{name}: {err.details!r} does not name {text!r}"
    if code == INVALID:
        assert isinstance(err, poolclient.InvalidArgument)
    if code in (INVALID, EXHAUSTED) and " " not in text:
        assert err.field == text  # the google.rpc.BadRequest detail names it too
    if code == INTERNAL:
        assert "Traceback" not in err.details and err.request_id and err.request_id in err.details
        assert err.request_id in server.log()  # the log line carries the same id
    # still healthy, and still serving good requests
    assert health_status(server.target) == "SERVING"
    with PoolClient(server.target) as c:
        np.testing.assert_array_equal(c.max_pool(X, 2), reference.forward(PoolSpec("max", (2, 2)), X)[0])


def test_too_many_concurrent_calls():
    """Past --max-concurrent-rpcs the server answers RESOURCE_EXHAUSTED instead of queueing."""
    import threading

    with ServerProcess("--max-concurrent-rpcs", "1", metrics=True) as srv, PoolClient(srv.target) as slow, \
            PoolClient(srv.target, options=[("grpc.use_local_subchannel_pool", 1)]) as fast:
        result = {}
        t = threading.Thread(target=lambda: result.update(
            y=slow.max_pool(X, 2, metadata=[("poolserve-test-sleep-ms", "1500")])))
        t.start()
        try:
            wait_for(lambda: in_flight(srv.metrics_port) >= 1, 20, "the slow call to be in")
            with pytest.raises(poolclient.ResourceExhausted):
                fast.max_pool(X, 2)
        finally:
            t.join(30)
        np.testing.assert_array_equal(result["y"], reference.forward(PoolSpec("max", (2, 2)), X)[0])
        np.testing.assert_array_equal(fast.max_pool(X, 2), result["y"])  # served once the slot is free
