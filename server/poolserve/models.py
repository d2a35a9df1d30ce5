"""Models of the Open Inference Protocol: pooling operations with fixed parameters, by name.

A model is a :class:`~poolserve.spec.PoolSpec` plus what the protocol needs to describe it: a
datatype, a spatial rank, and optionally the backend that runs it.  Its name says what it does,
``<mode>pool[<rank>d]_<kernel>_s<stride>[_p<pad>][_<dtype>]``:

    maxpool_2x2_s2        max, 2x2 window, stride 2, no padding, FP32, NCHW
    maxpool_3x3_s2_p1     max, 3x3 window, stride 2, 1 pixel of padding on every side
    avgpool_2x2_s2        average, 2x2, stride 2
    globalavgpool         average over the whole spatial extent -> N x C x 1 x 1

Every model has one input, ``input`` (N, C, *spatial; channels-last models N, *spatial, C), and
the outputs ``output`` (the pooled tensor, same datatype) and, for max models, ``indices``
(INT64 argmax offsets into the whole input, returned only when requested).  Dimensions are
variable (-1): the spatial sizes and the batch are the request's own.

The default set (:data:`DEFAULT_MODELS`) is always there unless the repository file says
``defaults: false``; a repository file (JSON, or YAML with PyYAML installed) adds models:

    {"models": {"maxpool_5x5_s1_p2": {"mode": "max", "kernel_shape": [5, 5], "strides": [1, 1],
                                      "pads": [2, 2, 2, 2], "backend": "c"}}}

Keys of a model: the PoolSpec fields (``mode``, ``kernel_shape``, ``strides``, ``pads``,
``auto_pad``, ``dilations``, ``ceil_mode``, ``count_include_pad``, ``p``, ``layout``,
``global_pool``), plus ``datatype`` (FP32, FP16, FP64, INT8, UINT8; default FP32), ``rank``
(spatial axes of a global model; default 2), ``backend`` and ``provider`` (default: the
server's policy).  Mistakes are refused at start-up with the model and key named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .spec import DTYPES_BY_MODE, MAX_SPATIAL_RANK, PoolSpec, SpecError

VERSION = "1"  # every model has exactly one version
INPUT, OUTPUT, INDICES = "input", "output", "indices"

# The protocol's datatype strings <-> numpy dtype names, for the types pooling takes.
NUMPY_BY_DATATYPE = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "INT8": "int8",
                     "UINT8": "uint8", "INT64": "int64"}
DATATYPE_BY_NUMPY = {v: k for k, v in NUMPY_BY_DATATYPE.items()}

_SPEC_KEYS = ("mode", "kernel_shape", "strides", "pads", "auto_pad", "dilations", "ceil_mode",
              "count_include_pad", "p", "layout", "global_pool")
_MODEL_KEYS = _SPEC_KEYS + ("datatype", "rank", "backend", "provider", "description")


class RepositoryError(ValueError):
    """A model-repository file or entry that cannot be served; the message names where."""


@dataclass(frozen=True)
class Model:
    name: str
    spec: PoolSpec          # return_indices is decided per request (the `indices` output)
    datatype: str = "FP32"  # the protocol's string
    rank: int = 2           # spatial axes
    backend: str = ""       # "" = the server's policy
    provider: str = ""
    description: str = ""

    @property
    def dtype(self) -> str:
        return NUMPY_BY_DATATYPE[self.datatype]

    @property
    def outputs(self) -> tuple[str, ...]:
        return (OUTPUT, INDICES) if self.spec.mode == "max" else (OUTPUT,)

    def input_shape(self) -> list[int]:
        """The declared input shape: every dimension variable."""
        return [-1] * (2 + self.rank)

    def output_shape(self) -> list[int]:
        """Variable too, except the 1s a global pool produces."""
        if not self.spec.global_pool:
            return [-1] * (2 + self.rank)
        if self.spec.layout == "channels_first":
            return [-1, -1] + [1] * self.rank
        return [-1] + [1] * self.rank + [-1]

    def parameters(self) -> dict[str, str]:
        """The pooling parameters as text, for ModelConfig.parameters."""
        s = self.spec
        out = {"mode": s.mode, "layout": s.layout}
        if s.global_pool:
            out["global_pool"] = "true"
        else:
            out["kernel_shape"] = ",".join(map(str, s.kernel_shape))
            out["strides"] = ",".join(map(str, s.strides or s.kernel_shape))
            if s.pads:
                out["pads"] = ",".join(map(str, s.pads))
            if s.auto_pad != "NOTSET":
                out["auto_pad"] = s.auto_pad
            if s.dilations:
                out["dilations"] = ",".join(map(str, s.dilations))
            if s.ceil_mode:
                out["ceil_mode"] = "true"
        if s.count_include_pad:
            out["count_include_pad"] = "true"
        if s.mode == "lp":
            out["p"] = repr(float(s.p))
        if self.backend:
            out["backend"] = self.backend
        if self.provider:
            out["provider"] = self.provider
        return out


def model_from_dict(name: str, entry: dict) -> Model:
    """Build and check one model.  RepositoryError names the model and the key."""
    where = f"model {name!r}"
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
        raise RepositoryError(f"{where}: a name is letters, digits, '_', '-' and '.'")
    if not isinstance(entry, dict):
        raise RepositoryError(f"{where}: must be a mapping of keys to values, not {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_MODEL_KEYS))
    if unknown:
        raise RepositoryError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_MODEL_KEYS)}")
    if "return_indices" in entry:  # not in _MODEL_KEYS, but say why
        raise RepositoryError(f"{where}: indices are an output a request asks for, not a model key")
    datatype = entry.get("datatype", "FP32")
    try:
        spec = PoolSpec(**{k: entry[k] for k in _SPEC_KEYS if k in entry})
    except SpecError as e:
        raise RepositoryError(f"{where}: {e}") from None
    except TypeError as e:
        raise RepositoryError(f"{where}: {e}") from None
    if datatype not in NUMPY_BY_DATATYPE or NUMPY_BY_DATATYPE[datatype] not in DTYPES_BY_MODE[spec.mode]:
        takes = [DATATYPE_BY_NUMPY[d] for d in DTYPES_BY_MODE[spec.mode]]
        raise RepositoryError(f"{where}: datatype {datatype!r}: {spec.mode} pooling takes {', '.join(takes)}")
    rank = entry.get("rank", spec.rank or 2)
    if not isinstance(rank, int) or not 1 <= rank <= MAX_SPATIAL_RANK:
        raise RepositoryError(f"{where}: rank {rank!r} must be 1 to {MAX_SPATIAL_RANK}")
    if spec.rank is not None and rank != spec.rank:
        raise RepositoryError(f"{where}: rank {rank} disagrees with kernel_shape {list(spec.kernel_shape)}")
    for key in ("backend", "provider", "description"):
        if not isinstance(entry.get(key, ""), str):
            raise RepositoryError(f"{where}: {key} must be a string")
    return Model(name=name, spec=spec, datatype=datatype, rank=rank, backend=entry.get("backend", ""),
                 provider=entry.get("provider", ""), description=entry.get("description", ""))


def _default_entries() -> dict[str, dict]:
    two = {"kernel_shape": [2, 2]}
    out = {
        "maxpool_2x2_s2": {"mode": "max", **two},
        "maxpool_3x3_s2_p1": {"mode": "max", "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        "maxpool_3x3_s1_p1": {"mode": "max", "kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]},
        "avgpool_2x2_s2": {"mode": "avg", **two},
        "avgpool_3x3_s2_p1": {"mode": "avg", "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        "lp2pool_2x2_s2": {"mode": "lp", "p": 2.0, **two},
        "globalavgpool": {"mode": "avg", "global_pool": True},
        "globalmaxpool": {"mode": "max", "global_pool": True},
        "maxpool1d_2_s2": {"mode": "max", "kernel_shape": [2]},
        "maxpool3d_2x2x2_s2": {"mode": "max", "kernel_shape": [2, 2, 2]},
        "avgpool3d_2x2x2_s2": {"mode": "avg", "kernel_shape": [2, 2, 2]},
        "maxpool_2x2_s2_nhwc": {"mode": "max", "layout": "channels_last", **two},
    }
    # The other datatypes, on the most common operation.
    for dt in ("FP16", "FP64", "INT8", "UINT8"):
        out[f"maxpool_2x2_s2_{dt.lower()}"] = {"mode": "max", "datatype": dt, **two}
    for dt in ("FP16", "FP64"):
        out[f"avgpool_2x2_s2_{dt.lower()}"] = {"mode": "avg", "datatype": dt, **two}
    return out


DEFAULT_MODELS: dict[str, Model] = {n: model_from_dict(n, e) for n, e in _default_entries().items()}


def load_repository(path: str | Path | None) -> dict[str, Model]:
    """The models to serve: the defaults, plus (or, with ``defaults: false``, only) the file's."""
    if path is None:
        return dict(DEFAULT_MODELS)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RepositoryError(f"model repository {str(path)!r}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise RepositoryError(f"model repository {str(path)!r}: reading YAML needs PyYAML "
                                      "(pip install pyyaml), or write the file as JSON") from None
            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except RepositoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- any parse error, reported with the file's name
        raise RepositoryError(f"model repository {str(path)!r}: cannot parse: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models", {}), dict):
        raise RepositoryError(f"model repository {str(path)!r}: must be a mapping with a 'models' mapping")
    unknown = sorted(set(doc) - {"models", "defaults"})
    if unknown:
        raise RepositoryError(f"model repository {str(path)!r}: unknown key(s) {', '.join(unknown)}; "
                              "known: models, defaults")
    defaults = doc.get("defaults", True)
    if not isinstance(defaults, bool):
        raise RepositoryError(f"model repository {str(path)!r}: defaults must be true or false")
    models = dict(DEFAULT_MODELS) if defaults else {}
    for name, entry in (doc.get("models") or {}).items():
        try:
            models[name] = model_from_dict(name, entry)  # a file's model replaces a default of that name
        except RepositoryError as e:
            raise RepositoryError(f"model repository {str(path)!r}: {e}") from None
    if not models:
        raise RepositoryError(f"model repository {str(path)!r}: no models (defaults: false and none declared)")
    return models
