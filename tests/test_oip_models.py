"""The model repository (poolserve.models) and the shared-memory registry (poolserve.shm), in
process: every refusal names what is wrong, every access outside a region is refused."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

from poolserve.errors import AlreadyExists, LimitExceeded, NotFound
from poolserve.models import DEFAULT_MODELS, RepositoryError, load_repository, model_from_dict
from poolserve.shm import SHM_DIR, SharedMemoryRegistry
from poolserve.spec import SpecError


# -- models ----------------------------------------------------------------------------------------
def test_defaults_are_named_for_what_they_do():
    m = DEFAULT_MODELS["maxpool_3x3_s2_p1"]
    assert (m.spec.mode, m.spec.kernel_shape, m.spec.strides, m.spec.pads) == ("max", (3, 3), (2, 2), (1, 1, 1, 1))
    assert DEFAULT_MODELS["avgpool_2x2_s2"].spec.strides in ((), (2, 2))  # default stride = kernel
    assert DEFAULT_MODELS["globalavgpool"].spec.global_pool
    assert DEFAULT_MODELS["maxpool_2x2_s2_int8"].datatype == "INT8"
    assert DEFAULT_MODELS["avgpool_2x2_s2"].outputs == ("output",)
    assert DEFAULT_MODELS["maxpool_2x2_s2"].outputs == ("output", "indices")


def test_repository_file_adds_to_the_defaults(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"models": {"maxpool_4x4_s4": {"mode": "max", "kernel_shape": [4, 4],
                                                              "backend": "c", "datatype": "UINT8"}}}))
    models = load_repository(path)
    assert set(models) == set(DEFAULT_MODELS) | {"maxpool_4x4_s4"}
    m = models["maxpool_4x4_s4"]
    assert (m.backend, m.datatype, m.rank, m.spec.kernel_shape) == ("c", "UINT8", 2, (4, 4))
    assert load_repository(None) == DEFAULT_MODELS


@pytest.mark.parametrize("doc,needle", [
    ({"models": {"m": {"mode": "max", "kernel_shape": [2, 2], "stride": [2, 2]}}}, "unknown key(s) stride"),
    ({"models": {"m": {"mode": "max", "kernel_shape": [2, 2], "pads": [3, 3, 3, 3]}}}, "model 'm': pads="),
    ({"models": {"m": {"mode": "avg", "kernel_shape": [2, 2], "datatype": "INT8"}}}, "avg pooling takes FP32"),
    ({"models": {"m": {"mode": "max", "kernel_shape": [2, 2], "datatype": "BF16"}}}, "datatype 'BF16'"),
    ({"models": {"m": {"mode": "max", "kernel_shape": [2, 2], "rank": 3}}}, "disagrees with kernel_shape"),
    ({"models": {"m": {"mode": "max", "global_pool": True, "rank": 4}}}, "rank 4 must be 1 to 3"),
    ({"models": {"bad name": {"mode": "max", "kernel_shape": [2]}}}, "a name is letters"),
    ({"models": {"m": [1, 2]}}, "must be a mapping"),
    ({"modles": {}}, "unknown key(s) modles"),
    ({"defaults": False, "models": {}}, "no models"),
])
def test_repository_refusals_name_the_model_and_key(tmp_path, doc, needle):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RepositoryError) as e:
        load_repository(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_repository_unreadable_or_unparsable(tmp_path):
    with pytest.raises(RepositoryError, match="No such file"):
        load_repository(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(RepositoryError, match="cannot parse"):
        load_repository(tmp_path / "broken.json")


def test_global_model_shapes():
    m = model_from_dict("g", {"mode": "avg", "global_pool": True, "rank": 3, "layout": "channels_last"})
    assert m.input_shape() == [-1] * 5 and m.output_shape() == [-1, 1, 1, 1, -1]


# -- shared memory ---------------------------------------------------------------------------------
@pytest.fixture
def shm_object():
    made = []

    def make(size: int) -> str:
        key = f"/pooltest_{uuid.uuid4().hex[:8]}"
        with open(os.path.join(SHM_DIR, key[1:]), "wb") as f:
            f.truncate(size)
        made.append(key)
        return key

    yield make
    for key in made:
        os.unlink(os.path.join(SHM_DIR, key[1:]))


def test_registry_reads_and_writes_inside_the_window(shm_object):
    key = shm_object(4096)
    reg = SharedMemoryRegistry()
    reg.register("r", key, offset=1024, byte_size=256)  # the window is bytes 1024..1279 of the object
    data = np.arange(16, dtype=np.float32)
    reg.write("outputs[0]", "r", 192, 64, data)
    assert np.frombuffer(reg.read("inputs[0]", "r", 192, 64), np.float32).tolist() == data.tolist()
    with open(os.path.join(SHM_DIR, key[1:]), "rb") as f:
        f.seek(1024 + 192)
        assert f.read(64) == data.tobytes()
    with pytest.raises(SpecError, match="past the end of region"):
        reg.read("inputs[0]", "r", 193, 64)
    with pytest.raises(SpecError, match="past the end of region"):
        reg.write("outputs[0]", "r", 200, 64, data)
    with pytest.raises(SpecError, match="needs 64 bytes"):
        reg.write("outputs[0]", "r", 0, 63, data)
    with pytest.raises(NotFound):
        reg.read("inputs[0]", "nope", 0, 1)
    assert [(r.name, r.key, r.offset, r.byte_size) for r in reg.status()] == [("r", key, 1024, 256)]
    reg.unregister("r")
    reg.unregister("r")  # idempotent, like Triton
    assert reg.status() == []
    with pytest.raises(NotFound):
        reg.read("inputs[0]", "r", 0, 1)


def test_registry_refuses_bad_registrations(shm_object):
    key = shm_object(100)
    reg = SharedMemoryRegistry(max_regions=2)
    with pytest.raises(SpecError, match="past the end"):
        reg.register("r", key, 0, 101)
    with pytest.raises(SpecError, match="past the end"):
        reg.register("r", key, 50, 51)
    for bad in ("/../etc/passwd", "a/b", "/", "..", ""):
        with pytest.raises(SpecError, match="must name one shared-memory object"):
            reg.register("r", bad, 0, 1)
    with pytest.raises(NotFound):
        reg.register("r", "/pooltest_missing_object", 0, 1)
    with pytest.raises(SpecError, match="byte_size"):
        reg.register("r", key, 0, 0)
    reg.register("a", key, 0, 100)
    with pytest.raises(AlreadyExists):
        reg.register("a", key, 0, 10)
    reg.register("b", key.lstrip("/"), 0, 10)  # shm_open's leading slash is optional
    with pytest.raises(LimitExceeded):
        reg.register("c", key, 0, 10)
    reg.close()
    assert reg.status() == []
