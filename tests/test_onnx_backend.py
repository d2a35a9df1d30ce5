"""The ONNX backend agrees with the numpy reference and with the C backend (three-way):
exactly for max values and indices, within tests/strategies.py's summation-order tolerance for
avg, lp and every backward.  Cases the backend refuses must be refused by supports() first and
then raise Unsupported -- never a wrong answer."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime (pip install poolserve[server])")

from poolserve import reference  # noqa: E402
from poolserve.backends.base import Unsupported  # noqa: E402
from poolserve.backends.c import CBackend  # noqa: E402
from poolserve.backends.onnx import OnnxBackend  # noqa: E402
from poolserve.backends.onnx.capabilities import KERNEL_GAPS  # noqa: E402
from poolserve.spec import PoolSpec  # noqa: E402

from strategies import arrays, assert_close, examples, specs, window_size  # noqa: E402

# one backend per module: its session cache is shared by every example, as in the server
ONNX = OnnxBackend(threads=2)
C = CBackend(threads=2)


def agree(spec, actual, expected, dtype, shape):
    (y, ind), (yr, ir) = actual, expected
    assert y.shape == yr.shape and y.dtype == yr.dtype
    if spec.mode == "max":
        np.testing.assert_array_equal(y, yr)  # NaN == NaN here; -0.0 == 0.0 too (ties are equal)
        if spec.return_indices:
            assert ind.dtype == np.int64
            np.testing.assert_array_equal(ind, ir)
        else:
            assert ind is None
    else:
        assert_close(y, yr, dtype, window_size(spec, shape))


def check_forward(spec, x):
    dtype = x.dtype.name
    reason = ONNX.supports(spec, dtype)
    if reason is not None:
        with pytest.raises(Unsupported):
            ONNX.forward(spec, x)
        return False
    expected = reference.forward(spec, x)
    agree(spec, ONNX.forward(spec, x), expected, dtype, x.shape)
    agree(spec, C.forward(spec, x), expected, dtype, x.shape)
    return True


@examples(600)
@given(data=st.data(), case=specs())
def test_forward_three_way(data, case):
    spec, shape, dtype = case
    check_forward(spec, data.draw(arrays(shape, dtype)))


@examples(300)
@given(data=st.data(), case=specs(dtypes=("float32", "float64", "float16")))
def test_backward_three_way(data, case):
    spec, shape, dtype = case
    x = data.draw(arrays(shape, dtype, special=False))
    g = spec.resolve(shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dy = rng.uniform(-1, 1, size=g.output_shape).astype(dtype)
    reason = ONNX.supports_backward(spec, dtype)
    if reason is not None:
        with pytest.raises(Unsupported):
            ONNX.backward(spec, shape, dy, x=x, indices=np.zeros(g.output_shape, np.int64))
        return
    if spec.mode == "max":
        # route through the reference's indices so that all three scatter the same switches
        _, ind = reference.forward(spec.replace(return_indices=True), x)
        kw = {"indices": ind}
    else:
        kw = {"x": x}
    dxr = reference.backward(spec, shape, dy, **kw)
    scale = 1.0 if spec.mode != "lp" else 4.0
    for backend in (ONNX, C):
        dx = backend.backward(spec, shape, dy, **kw)
        assert dx.shape == shape and dx.dtype == dy.dtype
        assert_close(dx, dxr, dtype, window_size(spec, shape), scale=scale)
    if spec.mode == "max" and ONNX.supports(spec.replace(return_indices=True), dtype) is None:
        # from the input alone: the backend recomputes the indices with its own forward graph
        assert_close(ONNX.backward(spec, shape, dy, x=x), dxr, dtype, window_size(spec, shape))


# -- exported files -------------------------------------------------------------------------------

EXPORT_SPECS = [
    PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True),
    PoolSpec("max", (2,), layout="channels_last", return_indices=True, dilations=(2,), ceil_mode=True),
    PoolSpec("max", (2, 2, 2)),
    PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 0, 1, 1), count_include_pad=True, ceil_mode=True),
    PoolSpec("avg", (2, 2), layout="channels_last", auto_pad="SAME_UPPER"),
    PoolSpec("lp", (2, 3), p=1.5, pads=(0, 1, 1, 0)),
    PoolSpec("avg", global_pool=True, layout="channels_last"),
    PoolSpec("max", global_pool=True),
]


def _feeds_and_expected(entry, rng):
    """Inputs for an exported graph (by index.json's entry) and the reference's answer."""
    spec, dtype, rank = PoolSpec(**entry["spec"]), entry["dtype"], entry["rank"]
    spatial = (7, 6, 5)[:rank] if rank < 3 else (5, 4, 6)
    shape = (2, 3, *spatial) if spec.layout == "channels_first" else (2, *spatial, 3)
    x = rng.integers(-3, 4, size=shape).astype(dtype)  # ties everywhere
    if entry["kind"] == "forward":
        return {"X": x}, reference.forward(spec, x)
    g = spec.resolve(shape)
    dy = rng.uniform(-1, 1, size=g.output_shape).astype(dtype)
    available = {"dY": dy, "X": x, "input_shape": np.asarray(shape, np.int64),
                 "pads_begin": np.asarray(g.pads_begin, np.int64)}
    if spec.mode == "max":
        available["Indices"] = reference.forward(spec.replace(return_indices=True), x)[1]
        expected = reference.backward(spec, shape, dy, indices=available["Indices"])
    else:
        expected = reference.backward(spec, shape, dy, x=x)
    return {name: available[name] for name in entry["inputs"]}, (expected,)


def test_exported_files_load_in_a_fresh_session_and_match(tmp_path):
    import json

    import onnx
    import onnxruntime as ort

    from poolserve.export import export_models

    written, skipped = export_models(tmp_path, EXPORT_SPECS, dtypes=("float32", "float16", "int8"),
                                     global_ranks=(1, 2))
    index = json.loads((tmp_path / "index.json").read_text())
    assert sorted(p.name for p in written) == sorted(e["file"] for e in index.values())
    assert all("c backend" in line or "kernel_shape = the spatial shape" in line for line in skipped)  # why
    kinds = {(e["kind"], e["spec"]["mode"]) for e in index.values()}
    assert kinds == {(k, m) for k in ("forward", "backward") for m in ("max", "avg", "lp")}
    rng = np.random.default_rng(7)
    for name, entry in index.items():
        path = tmp_path / entry["file"]
        assert path.stem == name
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert "PoolSpec(" in model.doc_string and model.graph.doc_string
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # no options: as a user would
        feeds, expected = _feeds_and_expected(entry, rng)
        got = session.run(entry["outputs"], feeds)
        spec, dtype = PoolSpec(**entry["spec"]), entry["dtype"]
        if entry["kind"] == "forward":
            agree(spec, (got[0], got[1] if len(got) > 1 else None), expected, dtype, feeds["X"].shape)
        else:
            scale = 1.0 if spec.mode != "lp" else 4.0
            assert_close(got[0], expected[0], dtype, window_size(spec, got[0].shape), scale=scale)


def test_backend_serves_an_exported_directory(tmp_path):
    from poolserve.export import export_models

    spec = EXPORT_SPECS[0]
    export_models(tmp_path, [spec], backward=False)
    served = OnnxBackend(threads=1, model_dir=tmp_path, build_missing=False)
    x = np.random.default_rng(3).standard_normal((1, 2, 9, 9)).astype(np.float32)
    assert served.supports(spec, "float32") is None
    agree(spec, served.forward(spec, x), reference.forward(spec, x), "float32", x.shape)
    other = spec.replace(strides=(1, 1))
    assert "does not exist" in served.supports(other, "float32")
    with pytest.raises(Unsupported, match="export-onnx"):
        served.forward(other, x)
    export_models(tmp_path, [PoolSpec("avg", global_pool=True)], global_ranks=(1,), backward=False)
    assert served.supports(PoolSpec("avg", global_pool=True), "float32") is None  # a rank-1 file serves
    assert "does not exist" in served.supports(PoolSpec("avg", global_pool=True), "float16")


def test_export_command(tmp_path, capsys):
    from poolserve.app import main

    assert main(["export-onnx", "--out", str(tmp_path), "--spec",
                 '{"mode": "max", "global_pool": true, "return_indices": true}',
                 "--spec", '{"mode": "avg", "kernel_shape": [3]}', "--no-backward"]) == 0
    out = capsys.readouterr().out
    assert "skipped max global pooling on float32" in out and "Global* operator cannot run it" in out
    assert [p.name for p in tmp_path.glob("*.onnx")] == ["avgpool_1d_float32_nchw_k3_s3_forward.onnx"]


# -- sessions, providers ----------------------------------------------------------------------------

def test_one_session_serves_every_shape_and_the_cache_is_bounded():
    b = OnnxBackend(threads=1, cache_size=2)
    spec = PoolSpec("avg", (2, 2), pads=(1, 1, 0, 0))
    rng = np.random.default_rng(5)
    for shape in [(1, 1, 4, 4), (3, 5, 17, 9), (2, 1, 2, 30)]:  # symbolic N, C and spatial dims
        x = rng.standard_normal(shape).astype(np.float32)
        agree(spec, b.forward(spec, x), reference.forward(spec, x), "float32", shape)
    assert len(b._cache) == 1
    for k in (3, 4):
        b.forward(PoolSpec("avg", (k, k)), rng.standard_normal((1, 1, 8, 8)).astype(np.float32))
    assert len(b._cache) == 2


def test_threads_share_sessions():
    from concurrent.futures import ThreadPoolExecutor

    spec = PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True)
    xs = [np.random.default_rng(i).standard_normal((2, 4, 23, 19)).astype(np.float32) for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: ONNX.forward(spec, x), xs))
    for x, got in zip(xs, results):
        agree(spec, got, reference.forward(spec, x), "float32", x.shape)


def test_unavailable_provider_is_refused_with_the_available_list():
    from poolserve.backends.onnx import sessions

    have = OnnxBackend.available_providers()
    assert "CPUExecutionProvider" in have
    missing = [p for p in ("CUDAExecutionProvider", "NoSuchExecutionProvider") if p not in have]
    for name in missing:
        with pytest.raises(Unsupported, match="available: .*CPUExecutionProvider"):
            OnnxBackend(providers=name)
    assert sessions.resolve_providers("cpu") == ("CPUExecutionProvider",)


def test_errors_name_the_field():
    from poolserve.spec import SpecError

    spec = PoolSpec("max", (2, 2))
    with pytest.raises(SpecError, match="shape"):
        ONNX.forward(spec, np.zeros((1, 1, 4), np.float32))  # INVALID_ARGUMENT before any refusal
    with pytest.raises(Unsupported, match="c backend"):
        ONNX.forward(PoolSpec("avg", (2, 2)), np.zeros((1, 1, 4, 4), np.float64))
    with pytest.raises(SpecError, match="indices"):
        ONNX.backward(spec, (1, 1, 4, 4), np.ones((1, 1, 2, 2), np.float32),
                      indices=np.full((1, 1, 2, 2), 16, np.int64))


def test_pooling_off_the_named_provider_is_refused():
    """A session whose pooling node ONNX Runtime gives to the CPU although another provider was
    named is refused (sessions.WORK_OPS), even though get_providers() lists the named one first.
    Shown with the Azure provider, which every onnxruntime build has and which pools nothing;
    tests/test_cuda.py shows the CUDA side on a GPU."""
    import onnxruntime as ort

    from poolserve.backends.onnx import graph_key, graphs, sessions

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no AzureExecutionProvider")
    cache = sessions.SessionCache(("AzureExecutionProvider",), threads=1)
    key = graph_key("forward", PoolSpec("max", (2, 2)), "float32", 2)
    with pytest.raises(Unsupported, match=r"MaxPool \(CPUExecutionProvider\).*silent fallback"):
        cache.get(key, lambda: key.name, lambda: graphs.build(key).SerializeToString())
    cpu = sessions.SessionCache(("CPUExecutionProvider",), threads=1)
    assert cpu.get(key, lambda: key.name, lambda: graphs.build(key).SerializeToString()) is not None


# -- the refusals are real: each documented gap and deviation, shown on ONNX Runtime itself --------

def _single_node_session(op, dtype, rank=2, **attrs):
    import onnxruntime as ort
    from onnx import helper

    from poolserve.backends.onnx.graphs import IR_VERSION, OPSET

    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dims = ["N", "C"] + [f"D{i}" for i in range(rank)]
    graph = helper.make_graph([helper.make_node(op, ["X"], ["Y"], **attrs)], "probe",
                              [helper.make_tensor_value_info("X", t, dims)],
                              [helper.make_tensor_value_info("Y", t, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op,dtype", sorted(KERNEL_GAPS))
def test_kernel_gaps_are_real(op, dtype):
    from poolserve.backends.onnx.capabilities import onnx_takes

    # the refusal says whether ONNX itself lacks the type or only ONNX Runtime's CPU provider
    assert onnx_takes(op, dtype) == (not (op == "GlobalMaxPool" and dtype in ("int8", "uint8")))
    attrs = {"kernel_shape": [2, 2]} if not op.startswith("Global") else {}
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|INVALID_GRAPH|Could not find|Type Error"):
        s = _single_node_session(op, dtype, **attrs)
        s.run(None, {"X": np.ones((1, 1, 4, 4), dtype)})


def test_ort_maxpool_ignores_nan_and_misses_all_neg_inf_windows():
    """Why float max graphs carry the class-tensor correction (graphs._max_special_values)."""
    x = np.array([[[1, np.nan, -np.inf, -np.inf, np.nan, np.nan]]], np.float32)
    spec = PoolSpec("max", (2,))
    raw = _single_node_session("MaxPool", "float32", rank=1, kernel_shape=[2], strides=[2]).run(None, {"X": x})[0]
    expected, _ = reference.forward(spec, x)
    assert not np.isnan(raw[0, 0, 0]) and raw[0, 0, 1] == np.finfo(np.float32).min  # ORT: 1, -FLT_MAX
    np.testing.assert_array_equal(expected, [[[np.nan, -np.inf, np.nan]]])
    agree(spec, ONNX.forward(spec, x), (expected, None), "float32", x.shape)


@pytest.mark.parametrize("spec,shape", [
    (PoolSpec("avg", (2,), strides=(1,), dilations=(2,), auto_pad="SAME_UPPER"), (1, 1, 5)),
    (PoolSpec("avg", (1,), strides=(3,), auto_pad="SAME_UPPER"), (1, 1, 9)),
    (PoolSpec("max", (1,), strides=(5,), auto_pad="SAME_LOWER"), (1, 1, 5)),
])
def test_ort_same_padding_deviations_are_real(spec, shape):
    """ORT sizes SAME padding with the undilated kernel and without clamping at zero (wrong
    windows, or a run-time error); the backend refuses these specs, the unrefused graph shows why."""
    from poolserve.backends.onnx import graph_key, graphs

    assert "ONNX Runtime" in ONNX.supports(spec, "float32")
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    expected, _ = reference.forward(spec, x)
    key = graph_key("forward", spec, "float32")
    session = ONNX._cache._create(key.name, graphs.build(key).SerializeToString())
    try:
        raw = session.run(None, {"X": x})[0]
    except Exception as e:  # MaxPool notices its negative pads at run time; AveragePool does not
        assert "padding values must be non-negative" in str(e)
    else:
        assert raw.shape != expected.shape or not np.array_equal(raw, expected)
    np.testing.assert_array_equal(C.forward(spec, x)[0], expected)  # the c backend runs it


@pytest.mark.parametrize("spec", [
    PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True, layout="channels_last"),
    PoolSpec("max", (2, 2, 2), ceil_mode=True),
    PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=True, ceil_mode=True),
    PoolSpec("lp", (2, 2), p=2.0, layout="channels_last"),
], ids=lambda s: f"{s.mode}{s.rank}d-{s.layout}")
@pytest.mark.parametrize("special", [False, True], ids=["finite", "nan-inf"])
def test_larger_inputs_take_the_same_paths(spec, special):
    """Shapes big enough for ONNX Runtime's vectorised and multi-threaded paths (hypothesis
    draws small ones); NaN/-inf sprinkled so that the If's fix branch runs on them too."""
    rng = np.random.default_rng(11)
    spatial = (19, 33, 47)[-spec.rank:]
    shape = (2, 8, *spatial) if spec.layout == "channels_first" else (2, *spatial, 8)
    x = rng.standard_normal(shape).astype(np.float32)
    if special:
        mask = rng.random(shape) < 0.01
        x[mask] = rng.choice([np.nan, -np.inf, np.inf], size=int(mask.sum()))
        x[0, :2] = -np.inf  # whole planes of -inf (channels-first) or rows (channels-last)
    assert check_forward(spec, x)


def test_info_lists_the_providers():
    from poolserve import info

    entry = info.collect()["backends"]["onnx"]
    assert entry["available"] and "CPUExecutionProvider" in entry["providers"]
