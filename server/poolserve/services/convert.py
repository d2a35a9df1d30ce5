"""poolserve.v1 messages <-> the server's own types (PoolSpec, numpy arrays)."""

from __future__ import annotations

import functools

from poolclient._proto.poolserve.v1 import pooling_pb2 as pb
from poolclient.tensors import from_tensor, layout_of, to_tensor

from ..spec import SpecError, PoolSpec

MODE_BY_ENUM = {pb.MAX: "max", pb.AVG: "avg", pb.LP: "lp"}
ENUM_BY_MODE = {v: k for k, v in MODE_BY_ENUM.items()}
AUTO_PAD_BY_ENUM = {pb.NOTSET: "NOTSET", pb.SAME_UPPER: "SAME_UPPER", pb.SAME_LOWER: "SAME_LOWER",
                    pb.VALID: "VALID"}


def spec_from_proto(m: pb.PoolSpec, layout: str) -> PoolSpec:
    """Build (and so validate) the spec; errors name the API field, e.g. spec.strides.

    Memoised on the message's bytes: a client sends the same spec call after call, and building
    and validating a PoolSpec (~11 us) is a tenth of a small call's time in the server.  Returning
    the same object also lets the backends' plan caches hit on identity.  Only valid specs are
    kept (an exception is never cached); the cache is small and bounded."""
    return _spec_from_bytes(m.SerializeToString(deterministic=True), layout)


@functools.lru_cache(maxsize=256)
def _spec_from_bytes(key: bytes, layout: str) -> PoolSpec:
    return _build_spec(pb.PoolSpec.FromString(key), layout)


def _build_spec(m: pb.PoolSpec, layout: str) -> PoolSpec:
    if m.mode not in MODE_BY_ENUM:
        raise SpecError("spec.mode", _enum_name(pb.Mode, m.mode), "must be MAX, AVG or LP")
    if m.auto_pad not in AUTO_PAD_BY_ENUM:
        raise SpecError("spec.auto_pad", _enum_name(pb.AutoPad, m.auto_pad),
                        "must be NOTSET, SAME_UPPER, SAME_LOWER or VALID")
    try:
        return PoolSpec(mode=MODE_BY_ENUM[m.mode], kernel_shape=tuple(m.kernel_shape), strides=tuple(m.strides),
                        pads=tuple(m.pads), auto_pad=AUTO_PAD_BY_ENUM[m.auto_pad], dilations=tuple(m.dilations),
                        ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                        p=m.p if m.HasField("p") else 2.0, layout=layout,
                        return_indices=m.return_indices, global_pool=m.global_pool)
    except SpecError as e:
        raise SpecError(f"spec.{e.field}", e.value, str(e).split(": ", 1)[-1]) from None


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


__all__ = ["spec_from_proto", "from_tensor", "to_tensor", "layout_of", "pb"]
