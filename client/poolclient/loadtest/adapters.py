"""What the harness sends: one adapter per API turns a Scenario into a Payload.

A Payload is plain data (picklable, sent to every worker process): the full gRPC method path,
unary or streaming, the request *already serialized* and a checker for the replies.  Workers
call the method with no serializers, so they send these exact bytes and receive raw reply
bytes: the client spends nothing on protobuf per call, the same bytes go to the service and to
the echo baseline, and only the sampled replies that get spot-checked are ever parsed.

Adding an API (the Open Inference Protocol, shared memory) means adding a builder to BUILDERS
that returns a Payload; the engine, reports and plots need no change.
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
                       description=f"echo baseline of {self.description}")


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


def _oip(sc: Scenario, streaming: bool) -> Payload:
    # Hook for the Open Inference Protocol (KServe v2: inference.GRPCInferenceService/ModelInfer and
    # ModelStreamInfer, optionally with system shared memory): its servicer is another issue.  A
    # builder here serializes a ModelInferRequest with raw_input_contents and checks the
    # ModelInferResponse against the same reference; nothing else in the harness changes.
    raise NotImplementedError("--api oip: the Open Inference Protocol servicer is not in this build yet")


BUILDERS = {
    "native": lambda sc: _native(sc, False),
    "native-stream": lambda sc: _native(sc, True),
    "oip": lambda sc: _oip(sc, False),
    "raw": lambda sc: _raw(sc, False),
    "raw-stream": lambda sc: _raw(sc, True),
}


def build(api: str, sc: Scenario) -> Payload:
    if api not in BUILDERS:
        raise ValueError(f"api={api!r}: must be one of {', '.join(BUILDERS)}")
    return BUILDERS[api](sc)
