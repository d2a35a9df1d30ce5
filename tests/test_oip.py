"""The Open Inference Protocol against a real server, spoken by NVIDIA's tritonclient.

One server process (tests/serving.py) serves both APIs on one port; every result is checked
against the numpy reference.  Typed `contents` are sent through tritonclient's own generated
stub, because its InferInput always sends raw bytes.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
shm_util = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import grpc  # noqa: E402

from poolserve import reference  # noqa: E402
from poolserve.models import DEFAULT_MODELS  # noqa: E402
from serving import ServerProcess  # noqa: E402

REPOSITORY = {"models": {
    "maxpool_5x5_s1_p2": {"mode": "max", "kernel_shape": [5, 5], "strides": [1, 1], "pads": [2, 2, 2, 2],
                          "backend": "c"},
    "avgpool_3x3_s2_p1_incl": {"mode": "avg", "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                               "count_include_pad": True},
}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo") / "models.json"
    path.write_text(json.dumps(REPOSITORY))
    with ServerProcess("--model-repository", str(path)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as ch:
        yield service_pb2_grpc.GRPCInferenceServiceStub(ch)


def spec_of(name: str, indices: bool = False):
    from poolserve.models import model_from_dict

    model = DEFAULT_MODELS.get(name) or model_from_dict(name, REPOSITORY["models"][name])
    return model.spec.replace(return_indices=indices) if indices else model.spec


def expected(name: str, x: np.ndarray, indices: bool = False):
    return reference.forward(spec_of(name, indices), x)


def check_close(got: np.ndarray, want: np.ndarray, exact: bool):
    assert got.dtype == want.dtype and got.shape == want.shape
    if exact:
        np.testing.assert_array_equal(got, want)
    else:  # summation order may differ from the reference's (DESIGN.md)
        tol = 2e-3 if want.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def random_input(shape, datatype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype in ("INT8", "UINT8"):
        info = np.iinfo(datatype.lower())
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=datatype.lower())
    dtype = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}[datatype]
    return rng.standard_normal(shape).astype(dtype)


def infer(client, model: str, x: np.ndarray, datatype: str, outputs=("output",), **kw):
    inp = grpcclient.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs], **kw)


def status_of(excinfo) -> str:
    return excinfo.value.status().replace("StatusCode.", "")


def still_serving(client):
    assert client.is_server_live() and client.is_server_ready()
    x = random_input((1, 2, 4, 4), "FP32")
    np.testing.assert_array_equal(infer(client, "maxpool_2x2_s2", x, "FP32").as_numpy("output"),
                                  expected("maxpool_2x2_s2", x)[0])


# -- health and metadata ---------------------------------------------------------------------------
def test_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("maxpool_2x2_s2")
    assert client.is_model_ready("maxpool_5x5_s1_p2")  # from the repository file
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("maxpool_2x2_s2", model_version="2")


def test_health_service_knows_the_inference_service(server):
    from serving import health_status

    assert health_status(server.target, "inference.GRPCInferenceService") == "SERVING"


def test_not_ready_while_draining():
    with ServerProcess("--drain-delay", "3") as srv:
        c = grpcclient.InferenceServerClient(srv.target)
        assert c.is_server_ready()
        srv.signal()
        from serving import wait_for

        wait_for(lambda: not c.is_server_ready(), 2.5, "ServerReady to turn false")
        assert c.is_server_live()  # still answering while it drains
        c.close()


def test_server_metadata(client):
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "poolserve"
    assert {"model_configuration", "system_shared_memory", "statistics"} <= set(md["extensions"])


def test_model_metadata_has_variable_dims(client):
    md = client.get_model_metadata("maxpool_3x3_s2_p1", as_json=True)
    assert md["versions"] == ["1"]
    assert md["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "-1", "-1", "-1"]}]
    assert [(o["name"], o["datatype"]) for o in md["outputs"]] == [("output", "FP32"), ("indices", "INT64")]
    g = client.get_model_metadata("globalavgpool", as_json=True)
    assert g["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "-1", "1", "1"]}]
    assert client.get_model_metadata("maxpool3d_2x2x2_s2", as_json=True)["inputs"][0]["shape"] == ["-1"] * 5


def test_model_config(client):
    cfg = client.get_model_config("maxpool_3x3_s2_p1").config
    assert cfg.name == "maxpool_3x3_s2_p1" and cfg.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [-1, -1, -1, -1])]
    assert [o.name for o in cfg.output] == ["output", "indices"]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"mode": "max", "layout": "channels_first", "kernel_shape": "3,3", "strides": "2,2",
                      "pads": "1,1,1,1"}
    assert not cfg.HasField("sequence_batching") and not cfg.model_transaction_policy.decoupled
    custom = client.get_model_config("maxpool_5x5_s1_p2", as_json=True)["config"]
    assert custom["backend"] == "c" and custom["parameters"]["pads"]["string_value"] == "2,2,2,2"
    half = client.get_model_config("maxpool_2x2_s2_fp16", as_json=True)["config"]
    assert half["input"][0]["data_type"] == "TYPE_FP16"


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    names = {m["name"] for m in index}
    assert set(DEFAULT_MODELS) | set(REPOSITORY["models"]) == names
    assert {m["state"] for m in index} == {"READY"}


# -- inference -------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,shape", [
    ("maxpool_2x2_s2", (2, 3, 8, 8)), ("maxpool_3x3_s2_p1", (1, 4, 9, 7)), ("maxpool_3x3_s1_p1", (1, 2, 5, 5)),
    ("avgpool_2x2_s2", (1, 3, 6, 6)), ("avgpool_3x3_s2_p1", (1, 2, 7, 7)), ("lp2pool_2x2_s2", (1, 2, 6, 4)),
    ("globalavgpool", (2, 5, 7, 3)), ("globalmaxpool", (1, 3, 4, 4)), ("maxpool1d_2_s2", (1, 2, 9)),
    ("maxpool3d_2x2x2_s2", (1, 2, 4, 4, 4)), ("avgpool3d_2x2x2_s2", (1, 2, 4, 6, 4)),
    ("maxpool_2x2_s2_nhwc", (1, 6, 6, 3)), ("maxpool_2x2_s2_fp16", (1, 3, 6, 6)),
    ("maxpool_2x2_s2_fp64", (1, 3, 6, 6)), ("maxpool_2x2_s2_int8", (1, 3, 6, 6)),
    ("maxpool_2x2_s2_uint8", (1, 3, 6, 6)), ("avgpool_2x2_s2_fp16", (1, 3, 6, 6)),
    ("avgpool_2x2_s2_fp64", (1, 3, 6, 6)), ("maxpool_5x5_s1_p2", (1, 2, 7, 7)),
    ("avgpool_3x3_s2_p1_incl", (1, 2, 7, 7)),
])
def test_infer_raw_matches_reference(client, model, shape):
    datatype = (DEFAULT_MODELS[model].datatype if model in DEFAULT_MODELS else "FP32")
    x = random_input(shape, datatype, seed=len(model))
    r = infer(client, model, x, datatype)
    want = expected(model, x)[0]
    check_close(r.as_numpy("output"), want, exact=spec_of(model).mode == "max")
    out = r.get_output("output")  # (tritonclient's as_json=True here returns None: it drops the value)
    assert out.datatype == datatype and list(out.shape) == list(want.shape)


def test_requested_outputs_with_indices(client):
    x = random_input((2, 3, 9, 9), "FP32", seed=3)
    want_y, want_i = expected("maxpool_3x3_s2_p1", x, indices=True)
    r = infer(client, "maxpool_3x3_s2_p1", x, "FP32", outputs=("output", "indices"))
    np.testing.assert_array_equal(r.as_numpy("output"), want_y)
    np.testing.assert_array_equal(r.as_numpy("indices"), want_i)
    assert r.as_numpy("indices").dtype == np.int64
    only = infer(client, "maxpool_3x3_s2_p1", x, "FP32", outputs=("indices",))
    assert only.as_numpy("output") is None
    np.testing.assert_array_equal(only.as_numpy("indices"), want_i)
    # no outputs named: the pooled tensor only
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    plain = client.infer("maxpool_3x3_s2_p1", [inp])
    np.testing.assert_array_equal(plain.as_numpy("output"), want_y)
    assert plain.as_numpy("indices") is None


def test_classification_is_refused_not_ignored(client):
    x = random_input((1, 2, 4, 4), "FP32")
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        client.infer("maxpool_2x2_s2", [inp], outputs=[grpcclient.InferRequestedOutput("output", class_count=3)])
    assert status_of(e) == "INVALID_ARGUMENT" and "classification" in e.value.message()


def test_request_id_and_backend_parameter(client):
    x = random_input((1, 2, 4, 4), "FP32")
    r = infer(client, "avgpool_2x2_s2", x, "FP32", request_id="req-17", parameters={"backend": "c"})
    resp = r.get_response()
    assert resp.id == "req-17" and resp.model_name == "avgpool_2x2_s2" and resp.model_version == "1"
    assert resp.parameters["backend"].string_param == "c"


def test_backend_parameter_errors(client):
    x = random_input((1, 2, 4, 4), "FP32")
    with pytest.raises(InferenceServerException) as e:
        infer(client, "avgpool_2x2_s2", x, "FP32", parameters={"backend": "nope"})
    assert status_of(e) == "INVALID_ARGUMENT" and "parameters['backend']" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        infer(client, "avgpool_2x2_s2", x, "FP32", parameters={"backend": 3})
    assert status_of(e) == "INVALID_ARGUMENT" and "string_param" in e.value.message()


def _typed_request(model: str, datatype: str, shape, field: str, values) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=model, id="typed")
    t = req.inputs.add(name="input", datatype=datatype, shape=list(shape))
    getattr(t.contents, field).extend(values)
    return req


@pytest.mark.parametrize("model,datatype,field", [
    ("maxpool_3x3_s2_p1", "FP32", "fp32_contents"), ("avgpool_2x2_s2_fp64", "FP64", "fp64_contents"),
    ("maxpool_2x2_s2_int8", "INT8", "int_contents"), ("maxpool_2x2_s2_uint8", "UINT8", "uint_contents"),
])
def test_infer_typed_contents(stub, model, datatype, field):
    x = random_input((1, 2, 6, 6), datatype, seed=5)
    resp = stub.ModelInfer(_typed_request(model, datatype, x.shape, field, x.reshape(-1).tolist()))
    assert resp.id == "typed" and resp.outputs[0].name == "output"
    got = np.frombuffer(resp.raw_output_contents[0], dtype=x.dtype).reshape(resp.outputs[0].shape)
    check_close(got, expected(model, x)[0], exact=datatype in ("INT8", "UINT8") or "max" in model)


@pytest.mark.parametrize("model,datatype,field,values,needle", [
    ("maxpool_2x2_s2_fp16", "FP16", "fp32_contents", [0.0] * 16, "send raw_input_contents"),
    ("maxpool_2x2_s2_int8", "INT8", "int_contents", [0] * 15 + [200], "range -128..127"),
    ("maxpool_2x2_s2", "FP32", "fp32_contents", [0.0] * 15, "16 elements"),
    ("maxpool_2x2_s2", "FP32", "int_contents", [0] * 16, "contents.fp32_contents"),
])
def test_typed_contents_errors(stub, model, datatype, field, values, needle):
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(_typed_request(model, datatype, (1, 1, 4, 4), field, values))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details()


# -- refusals --------------------------------------------------------------------------------------
def test_unknown_model_and_version_are_not_found(client):
    x = random_input((1, 1, 4, 4), "FP32")
    with pytest.raises(InferenceServerException) as e:
        infer(client, "no_such_model", x, "FP32")
    assert status_of(e) == "NOT_FOUND" and "no_such_model" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        infer(client, "maxpool_2x2_s2", x, "FP32", model_version="7")
    assert status_of(e) == "NOT_FOUND" and "version '7'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert status_of(e) == "NOT_FOUND"
    still_serving(client)


@pytest.mark.parametrize("model,shape,datatype,send_dtype,outputs,needle", [
    ("maxpool_2x2_s2", (1, 2, 4, 4), "FP64", np.float64, ("output",), "inputs[0].datatype"),
    ("maxpool_2x2_s2", (2, 4, 4), "FP32", np.float32, ("output",), "inputs[0].shape"),
    ("maxpool_2x2_s2", (1, 1, 1, 1), "FP32", np.float32, ("output",), "spec.kernel_shape"),
    ("avgpool_2x2_s2", (1, 2, 4, 4), "FP32", np.float32, ("indices",), "outputs[0].name"),
    ("maxpool_2x2_s2", (1, 2, 4, 4), "FP32", np.float32, ("output", "output"), "requested twice"),
    ("maxpool_2x2_s2", (1, 0, 4, 4), "FP32", np.float32, ("output",), "input.shape"),
    ("maxpool_2x2_s2", (1, 2, 4, 4), "FP32", np.float32, ("no_such_output",), "has outputs output, indices"),
])
def test_bad_requests_are_invalid_argument(client, model, shape, datatype, send_dtype, outputs, needle):
    x = np.zeros(shape, dtype=send_dtype)
    with pytest.raises(InferenceServerException) as e:
        infer(client, model, x, datatype, outputs=outputs)
    assert status_of(e) == "INVALID_ARGUMENT", e.value.message()
    assert needle in e.value.message()
    still_serving(client)


def test_raw_byte_count_must_match_shape(stub, client):
    req = service_pb2.ModelInferRequest(model_name="maxpool_2x2_s2")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 4, 4])
    req.raw_input_contents.append(b"\0" * 60)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[0]" in e.value.details() and "64 bytes" in e.value.details()
    req.inputs[0].shape[:] = [1 << 20, 1 << 20, 1 << 20, 2]  # 2^61 elements: refused before any allocation
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(client)


def test_unimplemented_rpcs_say_so(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_cuda_shared_memory_status()
    assert status_of(e) == "UNIMPLEMENTED" and "system shared memory" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.load_model("maxpool_2x2_s2")
    assert status_of(e) == "UNIMPLEMENTED"


# -- streaming -------------------------------------------------------------------------------------
def test_stream_infer_answers_each_request_in_order(client, server):
    results = []
    c = grpcclient.InferenceServerClient(server.target)
    c.start_stream(callback=lambda result, error: results.append((result, error)))
    xs = [random_input((1, 2, 6, 6), "FP32", seed=i) for i in range(5)]
    try:
        for i, x in enumerate(xs):
            datatype = "FP64" if i == 2 else "FP32"  # the third is wrong: an error, and the stream goes on
            inp = grpcclient.InferInput("input", list(x.shape), datatype)
            inp.set_data_from_numpy(x.astype(np.float64) if i == 2 else x)
            c.async_stream_infer("maxpool_2x2_s2", [inp], request_id=f"s{i}",
                                 outputs=[grpcclient.InferRequestedOutput("output"),
                                          grpcclient.InferRequestedOutput("indices")])
    finally:
        c.stop_stream()  # waits for the outstanding responses
        c.close()
    assert len(results) == 5
    for i, (result, error) in enumerate(results):
        if i == 2:
            assert result is None and "INVALID_ARGUMENT" in error.message() and "datatype" in error.message()
            continue
        assert error is None and result.get_response().id == f"s{i}"
        y, ind = expected("maxpool_2x2_s2", xs[i], indices=True)
        np.testing.assert_array_equal(result.as_numpy("output"), y)
        np.testing.assert_array_equal(result.as_numpy("indices"), ind)


# -- statistics ------------------------------------------------------------------------------------
def _stats(client, model):
    return client.get_inference_statistics(model).model_stats[0]


def test_statistics_count_real_requests(client):
    model = "maxpool_3x3_s1_p1"
    before = _stats(client, model)
    x = random_input((1, 2, 8, 8), "FP32")
    for _ in range(3):
        infer(client, model, x, "FP32")
    with pytest.raises(InferenceServerException):
        infer(client, model, x.astype(np.float64), "FP64")
    after = _stats(client, model)
    s0, s1 = before.inference_stats, after.inference_stats
    assert after.inference_count - before.inference_count == 3
    assert after.execution_count - before.execution_count == 3
    assert s1.success.count - s0.success.count == 3 and s1.success.ns > s0.success.ns
    assert s1.fail.count - s0.fail.count == 1
    assert s1.compute_infer.count - s0.compute_infer.count == 3 and s1.compute_infer.ns > s0.compute_infer.ns
    assert after.last_inference > 0
    everything = client.get_inference_statistics().model_stats
    assert {m.name for m in everything} == set(DEFAULT_MODELS) | set(REPOSITORY["models"])


# -- system shared memory --------------------------------------------------------------------------
@pytest.fixture
def regions(client):
    """Create shared-memory objects like a Triton user does; unregister and destroy them after."""
    made = []

    def make(size: int):
        name = f"pooltest_{uuid.uuid4().hex[:8]}"
        handle = shm_util.create_shared_memory_region(name, "/" + name, size)
        made.append(handle)
        return name, "/" + name, handle

    yield make
    client.unregister_system_shared_memory()
    for h in made:
        shm_util.destroy_shared_memory_region(h)


def test_shared_memory_infer(client, regions):
    x = random_input((2, 3, 9, 9), "FP32", seed=11)
    y, ind = expected("maxpool_3x3_s2_p1", x, indices=True)
    in_name, in_key, in_h = regions(x.nbytes + 64)
    out_name, out_key, out_h = regions(4096 + y.nbytes + ind.nbytes)
    shm_util.set_shared_memory_region(in_h, [x], offset=64)
    client.register_system_shared_memory(in_name, in_key, x.nbytes + 64)
    client.register_system_shared_memory(out_name, out_key, 4096 + y.nbytes + ind.nbytes)
    status = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert set(status) >= {in_name, out_name} and int(status[in_name]["byte_size"]) == x.nbytes + 64

    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_shared_memory(in_name, x.nbytes, offset=64)
    o1 = grpcclient.InferRequestedOutput("output")
    o1.set_shared_memory(out_name, y.nbytes, offset=4096)
    o2 = grpcclient.InferRequestedOutput("indices")
    o2.set_shared_memory(out_name, ind.nbytes, offset=4096 + y.nbytes)
    r = client.infer("maxpool_3x3_s2_p1", [inp], outputs=[o1, o2])
    resp = r.get_response()  # the data is in shared memory, not in the response
    assert len(resp.raw_output_contents) == 0
    assert {o.name: o.parameters["shared_memory_region"].string_param for o in resp.outputs} == \
        {"output": out_name, "indices": out_name}
    got_y = shm_util.get_contents_as_numpy(out_h, np.float32, y.shape, offset=4096)
    got_i = shm_util.get_contents_as_numpy(out_h, np.int64, ind.shape, offset=4096 + y.nbytes)
    np.testing.assert_array_equal(got_y, y)
    np.testing.assert_array_equal(got_i, ind)

    # mixed: input from shared memory, output in the response
    r = client.infer("maxpool_3x3_s2_p1", [inp], outputs=[grpcclient.InferRequestedOutput("output"), o2])
    np.testing.assert_array_equal(r.as_numpy("output"), y)

    client.unregister_system_shared_memory(in_name)
    assert in_name not in client.get_system_shared_memory_status(as_json=True).get("regions", {})
    with pytest.raises(InferenceServerException) as e:
        client.infer("maxpool_3x3_s2_p1", [inp])
    assert status_of(e) == "NOT_FOUND" and in_name in e.value.message()


def test_shared_memory_bounds_are_checked(client, regions):
    x = random_input((1, 2, 4, 4), "FP32")  # 128 bytes
    name, key, h = regions(256)
    shm_util.set_shared_memory_region(h, [x])

    def refused(code, needle, fn):
        with pytest.raises(InferenceServerException) as e:
            fn()
        assert status_of(e) == code, e.value.message()
        assert needle in e.value.message(), e.value.message()

    # registering more than the object holds, or outside /dev/shm, or an object that does not exist
    refused("INVALID_ARGUMENT", "past the end", lambda: client.register_system_shared_memory(name, key, 257))
    refused("INVALID_ARGUMENT", "past the end",
            lambda: client.register_system_shared_memory(name, key, 200, offset=100))
    refused("INVALID_ARGUMENT", "key", lambda: client.register_system_shared_memory("evil", "/../../etc/passwd", 8))
    refused("NOT_FOUND", "no such object",
            lambda: client.register_system_shared_memory("ghost", "/pooltest_does_not_exist", 8))
    client.register_system_shared_memory(name, key, 192)  # a window of the object: bytes 0..191
    refused("ALREADY_EXISTS", name, lambda: client.register_system_shared_memory(name, key, 8))

    def infer_at(offset, size, model="maxpool_2x2_s2", out=None):
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory(name, size, offset=offset)
        return client.infer(model, [inp], outputs=out)

    at64 = shm_util.get_contents_as_numpy(h, np.float32, x.shape, offset=64)  # x's 2nd half, then zeros
    np.testing.assert_array_equal(infer_at(64, 128).as_numpy("output"), expected("maxpool_2x2_s2", at64)[0])
    refused("INVALID_ARGUMENT", "past the end of region", lambda: infer_at(65, 128))
    refused("INVALID_ARGUMENT", "is 128 bytes", lambda: infer_at(0, 127))
    small = grpcclient.InferRequestedOutput("output")
    small.set_shared_memory(name, 16)  # the output needs 32 bytes
    refused("INVALID_ARGUMENT", "needs 32 bytes", lambda: infer_at(0, 128, out=[small]))
    beyond = grpcclient.InferRequestedOutput("output")
    beyond.set_shared_memory(name, 32, offset=170)
    refused("INVALID_ARGUMENT", "past the end of region", lambda: infer_at(0, 128, out=[beyond]))
    # The client shrinks an object after registering it.  Reading a page wholly past the new end
    # would be a SIGBUS that kills the server; it must be a refusal instead.
    big, big_key, _ = regions(3 * 4096)
    client.register_system_shared_memory(big, big_key, 3 * 4096)
    os.truncate(f"/dev/shm/{big_key.lstrip('/')}", 100)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_shared_memory(big, 128, offset=8192)
    refused("INVALID_ARGUMENT", "smaller than the registered region", lambda: client.infer("maxpool_2x2_s2", [inp]))
    refused("NOT_FOUND", "not registered", lambda: client.get_system_shared_memory_status("nope"))
    still_serving(client)


# -- the native API on the same port ---------------------------------------------------------------
def test_native_api_on_the_same_port(server, client):
    import poolclient

    x = random_input((1, 2, 6, 6), "FP32")
    with poolclient.PoolClient(server.target) as native:
        via_oip = infer(client, "maxpool_2x2_s2", x, "FP32").as_numpy("output")
        np.testing.assert_array_equal(native.max_pool(x, 2), via_oip)


def test_oip_with_worker_processes():
    """--workers 2: each worker serves the protocol; one channel keeps its shared memory usable."""
    with ServerProcess("--workers", "2") as srv:
        c = grpcclient.InferenceServerClient(srv.target)
        x = random_input((1, 3, 8, 8), "FP32")
        for _ in range(3):
            np.testing.assert_array_equal(infer(c, "maxpool_2x2_s2", x, "FP32").as_numpy("output"),
                                          expected("maxpool_2x2_s2", x)[0])
        name = f"pooltest_{uuid.uuid4().hex[:8]}"
        h = shm_util.create_shared_memory_region(name, "/" + name, x.nbytes)
        try:
            shm_util.set_shared_memory_region(h, [x])
            c.register_system_shared_memory(name, "/" + name, x.nbytes)
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_shared_memory(name, x.nbytes)
            np.testing.assert_array_equal(c.infer("maxpool_2x2_s2", [inp]).as_numpy("output"),
                                          expected("maxpool_2x2_s2", x)[0])
            c.unregister_system_shared_memory(name)
        finally:
            shm_util.destroy_shared_memory_region(h)
            c.close()


# -- the repository file at start-up ---------------------------------------------------------------
def test_bad_repository_file_stops_the_server(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"models": {"maxpool_x": {"mode": "max", "kernel_shape": [2, 2], "pads": [5]}}}))
    srv = ServerProcess("--model-repository", str(path), startup_s=30)
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert "exited with 2" in str(e.value) and "maxpool_x" in str(e.value) and "pads" in str(e.value)


def test_yaml_repository_without_defaults(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "models.yaml"
    path.write_text("defaults: false\nmodels:\n  lp3pool_3x3_s3:\n    mode: lp\n    p: 3\n"
                    "    kernel_shape: [3, 3]\n    datatype: FP64\n")
    with ServerProcess("--model-repository", str(path)) as srv:
        c = grpcclient.InferenceServerClient(srv.target)
        assert [m["name"] for m in c.get_model_repository_index(as_json=True)["models"]] == ["lp3pool_3x3_s3"]
        x = random_input((1, 2, 9, 9), "FP64")
        got = infer(c, "lp3pool_3x3_s3", x, "FP64").as_numpy("output")
        from poolserve import PoolSpec

        check_close(got, reference.forward(PoolSpec("lp", kernel_shape=(3, 3), p=3.0), x)[0], exact=False)
        c.close()


# -- the README's example --------------------------------------------------------------------------
def test_readme_example_runs(server):
    import re
    from pathlib import Path

    from serving import ROOT

    text = (ROOT / "README.md").read_text()
    body = text.split("## Open Inference Protocol (Triton / KServe v2)\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```python\n(.*?)```", body, re.S)[0].replace("127.0.0.1:50051", server.target)
    scope: dict = {}
    exec(compile(block, str(Path("README.md")), "exec"), scope)
    y, idx = expected("maxpool_3x3_s2_p1", scope["x"], indices=True)
    np.testing.assert_array_equal(scope["y"], y)
    np.testing.assert_array_equal(scope["idx"], idx)
    assert y.shape == (1, 64, 28, 28)
    scope["client"].close()
