"""Our Open Inference Protocol .proto files against the descriptors NVIDIA's tritonclient ships.

Message and field names, numbers, types and labels are the wire format: any difference would
make tritonclient or perf_analyzer misread us.  The comparison walks every message and enum that
both define (nested ones included) and the service's methods.  Our stubs live in their own
descriptor pool (protos/generate.py says why), so both sets load in this one process.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

triton_service = pytest.importorskip("tritonclient.grpc.service_pb2")
triton_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from poolclient._proto.inference import grpc_service_pb2, model_config_pb2  # noqa: E402


def _messages(file_desc) -> dict:
    """full name -> Descriptor, nested messages included."""
    out = {}

    def walk(d):
        out[d.full_name] = d
        for n in d.nested_types:
            walk(n)

    for d in file_desc.message_types_by_name.values():
        walk(d)
    return out


def _enums(file_desc) -> dict:
    out = {e.full_name: e for e in file_desc.enum_types_by_name.values()}
    for m in _messages(file_desc).values():
        out.update({e.full_name: e for e in m.enum_types})
    return out


def _fields(message) -> dict:
    """name -> FieldDescriptorProto: number, type, label, type name, oneof, proto3 optional."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    return {f.name: f for f in proto.field}


def _facts(f: descriptor_pb2.FieldDescriptorProto) -> dict:
    return {"number": f.number, "type": descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
            "label": descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
            "type_name": f.type_name, "oneof_index": f.oneof_index if f.HasField("oneof_index") else None,
            "proto3_optional": f.proto3_optional}


PAIRS = [(grpc_service_pb2.DESCRIPTOR, triton_service.DESCRIPTOR),
         (model_config_pb2.DESCRIPTOR, triton_config.DESCRIPTOR)]
OURS = {k: v for ours, _ in PAIRS for k, v in _messages(ours).items()}
THEIRS = {k: v for _, theirs in PAIRS for k, v in _messages(theirs).items()}
COMMON = sorted(set(OURS) & set(THEIRS))


def test_package_and_service_names():
    assert grpc_service_pb2.DESCRIPTOR.package == "inference" == triton_service.DESCRIPTOR.package
    assert "GRPCInferenceService" in grpc_service_pb2.DESCRIPTOR.services_by_name


def test_we_define_every_message_tritonclient_does():
    # Not required by the wire, but a missing message would be a missing feature: say which.
    assert sorted(set(THEIRS) - set(OURS)) == []
    assert sorted(set(OURS) - set(THEIRS)) == []


@pytest.mark.parametrize("name", COMMON)
def test_message_fields_match(name):
    ours, theirs = OURS[name], THEIRS[name]
    ours_f, theirs_f = _fields(ours), _fields(theirs)
    assert sorted(ours_f) == sorted(theirs_f), name
    for fname, f in theirs_f.items():
        assert _facts(ours_f[fname]) == _facts(f), f"{name}.{fname}"
    assert [o.name for o in ours.oneofs] == [o.name for o in theirs.oneofs], name
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry, name


def test_enums_match():
    ours = {k: v for o, _ in PAIRS for k, v in _enums(o).items()}
    theirs = {k: v for _, t in PAIRS for k, v in _enums(t).items()}
    assert sorted(ours) == sorted(theirs)
    for name, e in theirs.items():
        assert {v.name: v.number for v in ours[name].values} == {v.name: v.number for v in e.values}, name


def test_service_methods_match():
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    facts = lambda s: {m.name: (m.input_type.full_name, m.output_type.full_name,  # noqa: E731
                                m.client_streaming, m.server_streaming) for m in s.methods}
    assert facts(ours) == facts(theirs)


def test_bytes_cross_over():
    """A request built with our stubs parses with tritonclient's, and back, unchanged."""
    r = grpc_service_pb2.ModelInferRequest(model_name="maxpool_2x2_s2", id="42")
    t = r.inputs.add(name="INPUT", datatype="FP32", shape=[1, 3, 4, 4])
    t.parameters["shared_memory_offset"].int64_param = 16
    r.parameters["backend"].string_param = "c"
    r.outputs.add(name="indices")
    r.raw_input_contents.append(b"\x00" * 192)
    theirs = triton_service.ModelInferRequest.FromString(r.SerializeToString())
    assert theirs.inputs[0].parameters["shared_memory_offset"].int64_param == 16
    assert grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString()) == r
