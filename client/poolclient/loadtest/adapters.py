"""What the harness sends: one adapter per API turns a Scenario into a Payload.

A Payload is plain data (picklable, sent to every worker process): the full gRPC method path,
unary or streaming, the request *already serialized* and a checker for the replies.  Workers
call the method with no serializers, so they send these exact bytes and receive raw reply
bytes: the client spends nothing on protobuf per call, the same bytes go to the service and to
the echo baseline, and only the sampled replies that get spot-checked are ever parsed.

Adding an API means adding a builder to BUILDERS that returns a Payload; the engine, reports and
plots need no change.  An API that reports failures inside a stream that stays open (the Open
Inference Protocol's ModelStreamInfer) also names a `stream_status` function that reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .echo import REPLY_BYTES_KEY
from .scenario import Scenario

ECHO_UNARY = "/poolserve.loadtest.Echo/Unary"
ECHO_STREAM = "/poolserve.loadtest.Echo/Stream"


@dataclass(frozen=True)
class Payload:
    api: str
    method: str               # full gRPC method path, e.g. /poolserve.v1.Pooling/Pool
    streaming: bool           # bidirectional stream, one reply per request, in order
    first: bytes              # the request (on a stream: the first message of each stream)
    next: bytes | None = None  # later messages of a stream (None: the same as first)
    reply_bytes: int | None = None  # expected reply size: what the echo baseline returns
    checker: object | None = None   # .check(reply: bytes) -> None, or a reason it is wrong
    checks_note: str = ""     # why spot checks are off, when they are
    metadata: tuple = ()
    description: str = ""
    # streams whose failures arrive as messages: reply bytes -> (status, detail), or None if good
    stream_status: object | None = None

    @property
    def request_bytes(self) -> int:
        return len(self.next if (self.streaming and self.next is not None) else self.first)

    def for_echo(self) -> "Payload":
        """The same bytes on the same method, for the echo server; it returns reply_bytes bytes."""
        md = self.metadata
        if self.reply_bytes is not None:
            check = LengthCheck(self.reply_bytes)
        else:  # a pure echo: exact only where every message is the same
            check = EchoCheck(self.first) if self.next is None else None
        if self.reply_bytes is not None:
            md = md + ((REPLY_BYTES_KEY, str(self.reply_bytes)),)
        return replace(self, metadata=md, checker=check, checks_note="echo: reply length only",
                       description=f"echo baseline of {self.description}", stream_status=None)


# -- checkers: picklable, parse only what they check ------------------------------------------
@dataclass(frozen=True)
class EchoCheck:
    expected: bytes

    def check(self, reply: bytes) -> str | None:
        if len(reply) != len(self.expected):
            return f"echo reply has {len(reply)} bytes, sent {len(self.expected)}"
        return None if reply == self.expected else "echo reply differs from the request"


@dataclass(frozen=True)
class LengthCheck:
    length: int

    def check(self, reply: bytes) -> str | None:
        return None if len(reply) == self.length else f"reply has {len(reply)} bytes, expected {self.length}"


def _tolerance(dtype: str, mode: str, op: str) -> tuple[float, float]:
    """(rtol, atol): max pooling forward and integers are exact; sums may differ in order
    (DESIGN.md), and max backward sums the gradients of overlapping windows."""
    if (mode == "max" and op == "pool") or np.dtype(dtype).kind in "iu":
        return 0.0, 0.0
    return {"float16": (2e-3, 2e-3), "float32": (1e-5, 1e-5)}.get(dtype, (1e-10, 1e-12))


def _compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{name}: got {got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}"
    if rtol == 0 and atol == 0:
        same = np.array_equal(got, want, equal_nan=want.dtype.kind == "f")
    else:
        same = np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if same:
        return None
    bad = int(np.count_nonzero(~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)))
    return f"{name}: {bad} of {want.size} elements differ from the reference"


@dataclass(frozen=True)
class NativeCheck:
    """Parse a PoolResponse / PoolBackwardResponse and compare with the numpy reference."""

    op: str
    expected: np.ndarray
    indices: np.ndarray | None
    rtol: float
    atol: float

    def check(self, reply: bytes) -> str | None:
        from .._proto.poolserve.v1 import pooling_pb2 as pb
        from ..tensors import from_tensor

        try:
            if self.op == "pool":
                msg = pb.PoolResponse.FromString(reply)
                bad = _compare("output", from_tensor(msg.output, "output"), self.expected, self.rtol, self.atol)
                if bad is None and self.indices is not None:
                    bad = _compare("indices", from_tensor(msg.indices, "indices"), self.indices, 0.0, 0.0)
                return bad
            msg = pb.PoolBackwardResponse.FromString(reply)
            return _compare("grad_input", from_tensor(msg.grad_input, "grad_input"), self.expected, self.rtol,
                            self.atol)
        except Exception as e:  # an unparsable reply is a wrong answer, not a crash of the harness
            return f"reply does not decode: {e}"


# -- builders -----------------------------------------------------------------------------------
def _raw(sc: Scenario, streaming: bool) -> Payload:
    """The input's bytes as an opaque message to the echo server: a pure transport measurement."""
    data = sc.make_input().tobytes()
    return Payload("raw-stream" if streaming else "raw", ECHO_STREAM if streaming else ECHO_UNARY, streaming,
                   data, None, None, EchoCheck(data), "", (), f"{len(data)} raw bytes ({sc.describe()})")


def _reference(sc: Scenario):
    """The numpy reference, or None and the reason spot checks are off."""
    try:
        from poolserve import reference
        from poolserve.spec import PoolSpec
    except ImportError:
        return None, "spot checks off: poolserve (the server package, with its numpy reference) is not installed"
    return (reference, PoolSpec(**sc.spec_fields())), ""


def _spec_proto(pb, sc: Scenario):
    m = pb.PoolSpec(mode={"max": pb.MAX, "avg": pb.AVG, "lp": pb.LP}[sc.mode],
                    kernel_shape=[] if sc.global_pool else sc.kernel_shape, strides=sc.strides, pads=sc.pads,
                    auto_pad=getattr(pb, sc.auto_pad), dilations=sc.dilations, ceil_mode=sc.ceil_mode,
                    count_include_pad=sc.count_include_pad, return_indices=sc.return_indices,
                    global_pool=sc.global_pool, backend=sc.backend, provider=sc.provider)
    if sc.p is not None:
        m.p = float(sc.p)
    return m


def _native(sc: Scenario, streaming: bool) -> Payload:
    from .._proto.poolserve.v1 import pooling_pb2 as pb
    from ..tensors import to_tensor

    if streaming and sc.op != "pool":
        raise ValueError("native-stream streams forward pooling only (PoolStream); use --api native for backward")
    x = sc.make_input()
    spec = _spec_proto(pb, sc)
    ref, note = _reference(sc)
    rtol, atol = _tolerance(sc.dtype, sc.mode, sc.op)
    if sc.op == "pool":
        first = pb.PoolRequest(input=to_tensor(x, sc.layout), spec=spec).SerializeToString()
        # PoolStream reuses the first message's spec when later ones leave it unset: that saving
        # is the point of streaming, so the harness measures it.
        nxt = pb.PoolRequest(input=to_tensor(x, sc.layout)).SerializeToString() if streaming else None
        method = "/poolserve.v1.Pooling/PoolStream" if streaming else "/poolserve.v1.Pooling/Pool"
        checker = reply_bytes = None
        if ref is not None:
            reference, pspec = ref
            y, ind = reference.forward(pspec, x)
            checker = NativeCheck("pool", y, ind, rtol, atol)
            reply = pb.PoolResponse(output=to_tensor(y, sc.layout), backend=sc.backend or "c", provider="cpu")
            if ind is not None:
                reply.indices.CopyFrom(to_tensor(ind, sc.layout))
            # a few bytes off where the backend's name differs: immaterial for the baseline
            reply_bytes = reply.ByteSize()
    else:
        if ref is None:  # the gradient's shape and max's indices come from the reference
            raise ValueError(f"op=backward needs the reference to build its request: {note}")
        reference, pspec = ref
        y, ind = reference.forward(pspec.replace(return_indices=sc.mode == "max"), x)
        g = np.random.default_rng(sc.seed + 1).standard_normal(y.shape).astype(y.dtype)
        req = pb.PoolBackwardRequest(spec=spec, input_shape=sc.shape, grad_output=to_tensor(g, sc.layout))
        if sc.mode == "max":
            req.indices.CopyFrom(to_tensor(ind, sc.layout))
        elif sc.mode == "lp":
            req.input.CopyFrom(to_tensor(x, sc.layout))
        first, nxt, method = req.SerializeToString(), None, "/poolserve.v1.Pooling/PoolBackward"
        dx = reference.backward(pspec, sc.shape, g, x=x, indices=ind)
        checker = NativeCheck("backward", dx, None, rtol, atol)
        reply_bytes = pb.PoolBackwardResponse(grad_input=to_tensor(dx, sc.layout), backend=sc.backend or "c",
                                              provider="cpu").ByteSize()
    # without a reference the baseline echoes the request back (reply_bytes None)
    return Payload("native-stream" if streaming else "native", method, streaming, first, nxt, reply_bytes,
                   checker, note, (), sc.describe())


# -- the Open Inference Protocol (KServe v2 / Triton) -------------------------------------------
OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"
OIP_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
# A serialized ModelStreamInferResponse that carries an error starts with field 1
# (error_message, wire type 2): tag byte 0x0A.  A good one starts with field 2 (0x12).
_STREAM_ERROR_TAG = 0x0A


@dataclass(frozen=True)
class OipCheck:
    """Compare a ModelInferResponse's outputs with the reference."""

    streaming: bool
    expected: dict  # output name -> array
    rtol: float
    atol: float

    def check(self, reply: bytes) -> str | None:
        from .._proto.inference import grpc_service_pb2 as oip

        try:
            if self.streaming:
                msg = oip.ModelStreamInferResponse.FromString(reply)
                if msg.error_message:
                    return f"stream error: {msg.error_message}"
                msg = msg.infer_response
            else:
                msg = oip.ModelInferResponse.FromString(reply)
            raw = dict(zip((o.name for o in msg.outputs), msg.raw_output_contents))
            for o in msg.outputs:
                if o.name in self.expected:
                    want = self.expected[o.name]
                    got = np.frombuffer(raw.get(o.name, b""), dtype=want.dtype)
                    if got.size != math.prod(o.shape):
                        return f"{o.name}: {len(raw.get(o.name, b''))} bytes for shape {list(o.shape)}"
                    bad = _compare(o.name, got.reshape(tuple(o.shape)), want,
                                   *((0.0, 0.0) if o.name == "indices" else (self.rtol, self.atol)))
                    if bad:
                        return bad
            missing = set(self.expected) - {o.name for o in msg.outputs}
            return f"outputs {sorted(missing)} missing from the reply" if missing else None
        except Exception as e:
            return f"reply does not decode: {e}"


def oip_stream_status(reply: bytes):
    """ModelStreamInfer reports a failed request inside the stream, which stays open: read the
    status from the message ("INVALID_ARGUMENT: ...") without parsing the good ones."""
    if not reply or reply[0] != _STREAM_ERROR_TAG:
        return None
    from .._proto.inference import grpc_service_pb2 as oip

    text = oip.ModelStreamInferResponse.FromString(reply).error_message
    code, sep, _ = text.partition(":")
    return (code if sep and code.isupper() else "UNKNOWN"), text


def _oip_model(sc: Scenario):
    """(model name, its PoolSpec or None, note): the named model, or the default model that pools
    the scenario's input the same way (same mode, layout, datatype and window geometry)."""
    try:
        from poolserve import models
        from poolserve.spec import PoolSpec
    except ImportError:
        if not sc.model:
            raise ValueError("--api oip: name the model with --model (poolserve, which knows the default "
                             "models, is not installed here)") from None
        return sc.model, None, "spot checks off: poolserve (which knows the models' specs) is not installed"
    repo = models.load_repository(None)
    if sc.model:
        m = repo.get(sc.model)
        if m is None:
            return sc.model, None, f"spot checks off: {sc.model!r} is not a default model, its spec is unknown here"
        return m.name, m, ""
    want = PoolSpec(**{**sc.spec_fields(), "return_indices": False})
    g = want.resolve(sc.shape)
    for m in repo.values():
        if (m.spec.mode, m.spec.layout, m.spec.p, m.spec.count_include_pad, m.dtype) != \
                (want.mode, want.layout, want.p, want.count_include_pad, sc.dtype):
            continue
        try:
            mg = m.spec.resolve(sc.shape)
        except Exception:
            continue
        if (mg.kernel, mg.strides, mg.dilations, mg.pads_begin, mg.pads_end, mg.out_spatial) == \
                (g.kernel, g.strides, g.dilations, g.pads_begin, g.pads_end, g.out_spatial):
            return m.name, m, ""
    raise ValueError(f"--api oip: no default model pools like {sc.describe()}; name one with --model "
                     f"(the defaults: {', '.join(sorted(repo))})")


def _oip(sc: Scenario, streaming: bool) -> Payload:
    from .._proto.inference import grpc_service_pb2 as oip

    if sc.op != "pool":
        raise ValueError("--api oip serves forward pooling only")
    name, model, note = _oip_model(sc)
    if model is not None and model.dtype != sc.dtype:
        sc = sc.with_overrides(dtype=model.dtype)  # the model fixes the datatype
    x = sc.make_input()
    datatype = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int8": "INT8", "uint8": "UINT8"}[sc.dtype]
    req = oip.ModelInferRequest(model_name=name)
    req.inputs.add(name="input", datatype=datatype, shape=x.shape)
    req.raw_input_contents.append(x.tobytes())
    outputs = ["output"] + (["indices"] if sc.return_indices else [])
    for o in outputs:
        req.outputs.add(name=o)
    if sc.backend:
        req.parameters["backend"].string_param = sc.backend
    if sc.provider:
        req.parameters["provider"].string_param = sc.provider
    checker = reply_bytes = None
    if model is not None:
        ref, ref_note = _reference(sc)
        if ref is None:
            note = ref_note
        else:
            reference, _ = ref
            y, ind = reference.forward(model.spec.replace(return_indices=sc.return_indices), x)
            expected = {"output": y, **({"indices": ind} if ind is not None else {})}
            rtol, atol = _tolerance(sc.dtype, model.spec.mode, "pool")
            checker = OipCheck(streaming, expected, rtol, atol)
            reply = oip.ModelInferResponse(model_name=name, id="")
            for o, a in expected.items():
                reply.outputs.add(name=o, datatype="INT64" if o == "indices" else datatype, shape=a.shape)
                reply.raw_output_contents.append(a.tobytes())
            reply.parameters["backend"].string_param = sc.backend or "c"
            reply_bytes = (oip.ModelStreamInferResponse(infer_response=reply) if streaming else reply).ByteSize()
    return Payload("oip-stream" if streaming else "oip", OIP_STREAM if streaming else OIP_INFER, streaming,
                   req.SerializeToString(), None, reply_bytes, checker, note, (),
                   f"{sc.describe()} as model {name}", oip_stream_status if streaming else None)


BUILDERS = {
    "native": lambda sc: _native(sc, False),
    "native-stream": lambda sc: _native(sc, True),
    "oip": lambda sc: _oip(sc, False),
    "oip-stream": lambda sc: _oip(sc, True),
    "raw": lambda sc: _raw(sc, False),
    "raw-stream": lambda sc: _raw(sc, True),
}


def build(api: str, sc: Scenario) -> Payload:
    if api not in BUILDERS:
        raise ValueError(f"api={api!r}: must be one of {', '.join(BUILDERS)}")
    return BUILDERS[api](sc)
