"""What one request computes: the op, the pooling spec, the input's shape, dtype and layout.

Field names are those of the wire's PoolSpec (and of poolserve.spec.PoolSpec), so a scenario
file reads like the API reference.  Inputs are generated once from a seed, so every worker and
the baseline send the very same bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

OPS = ("pool", "backward")


@dataclass(frozen=True)
class Scenario:
    name: str = "custom"
    op: str = "pool"  # "pool" (forward) or "backward"
    shape: tuple[int, ...] = (1, 16, 32, 32)
    dtype: str = "float32"
    layout: str = "channels_first"
    mode: str = "max"
    kernel_shape: tuple[int, ...] = (2, 2)
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    dilations: tuple[int, ...] = ()
    ceil_mode: bool = False
    count_include_pad: bool = False
    p: float | None = None
    return_indices: bool = False
    global_pool: bool = False
    backend: str = ""  # "c", "onnx"; empty: the server's policy
    provider: str = ""
    model: str = ""  # --api oip: the model to call (empty: the default model that pools like this)
    seed: int = 0

    def __post_init__(self):
        for name in ("shape", "kernel_shape", "strides", "pads", "dilations"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.op not in OPS:
            raise ValueError(f"op={self.op!r}: must be one of {', '.join(OPS)}")
        if not 3 <= len(self.shape) <= 5:
            raise ValueError(f"shape={list(self.shape)}: needs batch, channels and 1 to 3 spatial axes")
        np.dtype(self.dtype)  # raises TypeError on an unknown name

    # -- the spec in the two forms the harness needs ------------------------------------------
    def spec_fields(self) -> dict:
        """Keyword arguments of poolserve.spec.PoolSpec (the reference's spec)."""
        out = {k: getattr(self, k) for k in ("mode", "kernel_shape", "strides", "pads", "auto_pad", "dilations",
                                             "ceil_mode", "count_include_pad", "return_indices", "global_pool")}
        if self.global_pool:
            out["kernel_shape"] = ()
        if self.p is not None:
            out["p"] = float(self.p)
        out["layout"] = self.layout
        return out

    def make_input(self) -> np.ndarray:
        """The request's input, the same for a given seed; ints span the dtype's range."""
        rng = np.random.default_rng(self.seed)
        dt = np.dtype(self.dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            return rng.integers(info.min, info.max, size=self.shape, dtype=dt, endpoint=True)
        return rng.standard_normal(self.shape, dtype=np.float64).astype(dt)

    @property
    def input_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        spec = "global" if self.global_pool else f"k={list(self.kernel_shape)} s={list(self.strides or self.kernel_shape)}"
        if self.pads:
            spec += f" pads={list(self.pads)}"
        return f"{self.name}: {self.op} {self.mode} {spec} on {'x'.join(map(str, self.shape))} {self.dtype}"

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def with_overrides(self, **changes) -> "Scenario":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# The standard shape set of DESIGN.md ("Performance method"), float32, NCHW.
STANDARD = {
    "tiny": Scenario("tiny", shape=(1, 16, 32, 32), kernel_shape=(2, 2)),
    "resnet-stem": Scenario("resnet-stem", shape=(1, 64, 112, 112), kernel_shape=(3, 3), strides=(2, 2),
                            pads=(1, 1, 1, 1)),
    "vgg-pool1": Scenario("vgg-pool1", shape=(1, 64, 224, 224), kernel_shape=(2, 2)),
    "batch32": Scenario("batch32", shape=(32, 64, 56, 56), kernel_shape=(2, 2)),
    "wide-overlap": Scenario("wide-overlap", shape=(8, 256, 56, 56), kernel_shape=(3, 3), strides=(2, 2),
                             pads=(1, 1, 1, 1)),
    "video3d": Scenario("video3d", shape=(2, 32, 16, 56, 56), kernel_shape=(2, 2, 2), strides=(2, 2, 2)),
}


def load(name_or_path: str) -> Scenario:
    """A standard scenario by name, or a JSON (or TOML) file of Scenario fields."""
    if name_or_path in STANDARD:
        return STANDARD[name_or_path]
    with open(name_or_path, "rb") as f:
        raw = f.read()
    if name_or_path.endswith(".toml"):
        import tomllib

        data = tomllib.loads(raw.decode())
    else:
        data = json.loads(raw)
    known = {f.name for f in fields(Scenario)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{name_or_path}: unknown scenario field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    data.setdefault("name", name_or_path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return Scenario(**data)
