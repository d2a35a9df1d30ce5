"""The data plane: validate a request once, pick its backend, run it.  numpy in, numpy out.

Servicers (the native v1 API now, the Open Inference Protocol later) decode their messages into
arrays and a PoolSpec and call :class:`Dispatcher`; nothing here knows protobuf, and nothing in
the servicers knows a backend.  Every check that depends on the request happens here, before
a backend is called: shapes against the spec, element limits, backward's indices.

Backends plug in by name through :mod:`poolserve.backends`' registry.  A request names one
(``backend="c"``) or leaves it to the policy: ``auto`` takes the backend that measured fastest
for the request's spec class, dtype and input size (:mod:`poolserve.policy`'s table) when it is
available and runs the request, else the first in registry order that does; a backend name
makes that one the default.  A
backend or provider that was asked for and is not available is Unsupported (FAILED_PRECONDITION),
never silently replaced.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from . import backends
from .backends.base import Unsupported
from .errors import LimitExceeded
from .policy import PolicyTable
from .spec import FLOAT_DTYPES, INDEX_DTYPE, Geometry, PoolSpec, SpecError

DEFAULT_MAX_ELEMENTS = 1 << 28  # 256 Mi elements: a 256 MiB int8 or a 1 GiB float32 tensor


def provider_short(name: str) -> str:
    """'CUDAExecutionProvider' -> 'cuda'; 'cpu' stays 'cpu'."""
    name = name.strip()
    if name.endswith("ExecutionProvider"):
        name = name[: -len("ExecutionProvider")]
    return name.lower()


def provider_full(short: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider' (ONNX Runtime's name)."""
    return {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "Tensorrt", "rocm": "ROCM"}.get(short, short) + "ExecutionProvider"


@dataclass
class BackendSlot:
    """One registered backend: its class and providers, or why it cannot load here."""

    name: str
    cls: type | None = None
    reason: str = ""
    providers: tuple[str, ...] = ()  # short names; the first is the default
    instances: dict = field(default_factory=dict)  # provider -> backend instance

    @property
    def available(self) -> bool:
        return self.cls is not None


@dataclass
class Result:
    output: np.ndarray
    indices: np.ndarray | None
    backend: str
    provider: str


def _qualify(e: SpecError, tensor_field: str) -> SpecError:
    """Name fields as the API does: input.shape for the tensor, spec.pads for the spec."""
    if e.field in ("shape", "dtype"):
        name = f"{tensor_field}.{e.field}"
    elif "." in e.field or e.field in ("input", "indices", "input_shape"):
        name = e.field
    else:
        name = f"spec.{e.field}"
    out = SpecError(name, e.value, str(e).split(": ", 1)[-1])
    return out


class Dispatcher:
    CHECKED_ENTRIES = 1024

    def __init__(self, *, default_backend: str = "auto", kernel_threads: int | None = None,
                 onnx_threads: int | None = None, max_elements: int = DEFAULT_MAX_ELEMENTS,
                 max_result_bytes: int | None = None, policy: PolicyTable | None = None):
        """max_result_bytes: refuse, before computing, a result that could not be sent back
        (the transport's message limit).  Without it a small backward request could make the
        server allocate a gradient of up to max_elements float64s."""
        self.policy = policy if policy is not None else PolicyTable()
        self.max_elements = int(max_elements)
        self.max_result_bytes = max_result_bytes
        self.kernel_threads = kernel_threads or os.cpu_count() or 1
        self.onnx_threads = onnx_threads or self.kernel_threads
        self._lock = threading.Lock()
        # check_forward's answers for requests that passed: everything it depends on besides the
        # key (limits, policy, backends) is fixed at start-up, and the checks cost ~13 us a call
        self._checked: dict[tuple, tuple] = {}
        self.slots: dict[str, BackendSlot] = {}
        for name in backends.names():
            slot = BackendSlot(name)
            try:
                slot.cls = backends.load(name)
                slot.providers = self._providers_of(slot.cls)
                self._instance(slot, slot.providers[0])  # start-up cost now, not on the first request
            except backends.Unsupported as e:  # its message names the backend already
                slot.cls, slot.reason = None, str(e)
            except Exception as e:  # noqa: BLE001 -- a backend that fails to start is reported, not fatal
                slot.cls, slot.reason = None, f"backend {name!r} failed to start: {e}"
            self.slots[name] = slot
        if default_backend != "auto" and default_backend not in self.slots:
            raise ValueError(f"default backend {default_backend!r}: must be auto or one of {', '.join(self.slots)}")
        if default_backend != "auto" and not self.slots[default_backend].available:
            raise ValueError(f"default backend {default_backend!r} is not available: {self.slots[default_backend].reason}")
        self.default_backend = default_backend

    @staticmethod
    def _providers_of(cls) -> tuple[str, ...]:
        if hasattr(cls, "available_providers"):
            found = tuple(provider_short(p) for p in cls.available_providers())
            # CPU first: a request that names no provider gets the CPU, as documented
            return tuple(sorted(found, key=lambda p: p != "cpu")) or ("cpu",)
        return ("cpu",)

    def _instance(self, slot: BackendSlot, provider: str):
        with self._lock:
            inst = slot.instances.get(provider)
            if inst is None:
                if slot.name == "c":
                    inst = slot.cls(threads=self.kernel_threads)
                else:
                    inst = slot.cls(threads=self.onnx_threads, providers=[provider_full(provider)])
                slot.instances[provider] = inst
            return inst

    # -- choosing a backend ---------------------------------------------------------------------
    def choose(self, spec: PoolSpec, dtype: str, backend: str = "", provider: str = "", op: str = "forward",
               shape=None):
        """(backend instance, name, provider) for this request, or Unsupported saying why not.

        ``op`` "backward" asks a backend's ``supports_backward`` where it has one (a backend may
        run a spec forward and not backward).
        """
        provider = provider_short(provider) if provider else ""
        if backend and backend not in self.slots:
            raise SpecError("spec.backend", backend, f"unknown backend; known: {', '.join(self.slots)}")
        explicit = backend or (self.default_backend if self.default_backend != "auto" else "")
        names = [explicit] if explicit else list(self.slots)
        if not explicit and shape is not None:
            # auto: the table's pick first, then the rest in registry order
            best = self.policy.preferred(spec, dtype, math.prod(shape) * np.dtype(dtype).itemsize)
            if best in self.slots:
                names = [best] + [n for n in names if n != best]
        reasons = []
        for name in names:
            slot = self.slots[name]
            if not slot.available:
                reasons.append(slot.reason)  # "backend 'onnx' is not available here: ..."
                continue
            if provider and provider not in slot.providers:
                reasons.append(f"backend {name!r} has no provider {provider!r} here "
                               f"(it has: {', '.join(slot.providers)})")
                continue
            p = provider or slot.providers[0]
            inst = self._instance(slot, p)
            check = getattr(inst, "supports_backward", inst.supports) if op == "backward" else inst.supports
            why = check(spec, dtype)
            if why:
                reasons.append(f"backend {name!r}: {why}")
                continue
            return inst, name, p
        raise Unsupported("; ".join(reasons) or "no backend is available")

    # -- checks -----------------------------------------------------------------------------------
    def _check_elements(self, field: str, shape) -> None:
        n = math.prod(shape)
        if n > self.max_elements:
            raise LimitExceeded(field, list(shape), f"{n} elements is over this server's limit of {self.max_elements}")

    def _check_result_bytes(self, field: str, shape, nbytes: int) -> None:
        if self.max_result_bytes is not None and nbytes > self.max_result_bytes:
            raise LimitExceeded(field, list(shape), f"the result would take {nbytes} bytes, over this server's "
                                                    f"message limit of {self.max_result_bytes}")

    def resolve(self, spec: PoolSpec, shape, dtype: str | None, tensor_field: str) -> Geometry:
        try:
            g = spec.resolve(shape, dtype)
        except SpecError as e:
            raise _qualify(e, tensor_field) from None
        self._check_elements("output.shape", g.output_shape)
        return g

    # -- the two operations -----------------------------------------------------------------------
    def check_forward(self, spec: PoolSpec, shape, dtype: np.dtype, *, backend: str = "", provider: str = ""):
        """Every check of a forward request that needs only its header (shape and dtype, not the
        data), and the backend choice: (geometry, (instance, name, provider)).

        forward() runs it first; PoolChunked also runs it before it receives any data, so a bad
        request is refused before megabytes cross the wire, through this same code."""
        key = (spec, tuple(shape), dtype, backend, provider)
        hit = self._checked.get(key)
        if hit is not None:
            return hit
        self._check_elements("input.shape", shape)
        g = self.resolve(spec, shape, dtype.name, "input")
        per_element = dtype.itemsize + (8 if spec.return_indices else 0)
        self._check_result_bytes("input.shape", shape, g.output_elements * per_element)
        checked = g, self.choose(spec, dtype.name, backend, provider, shape=shape)
        if len(self._checked) >= self.CHECKED_ENTRIES:
            self._checked.clear()  # a bound, not an LRU: a server sees a handful of hot keys
        self._checked[key] = checked
        return checked

    def forward(self, spec: PoolSpec, x: np.ndarray, *, backend: str = "", provider: str = "") -> Result:
        _, (inst, name, prov) = self.check_forward(spec, x.shape, x.dtype, backend=backend, provider=provider)
        y, ind = inst.forward(spec, x)
        return Result(y, ind, name, prov)

    def backward(self, spec: PoolSpec, input_shape, grad_output: np.ndarray, *, x: np.ndarray | None = None,
                 indices: np.ndarray | None = None, backend: str = "", provider: str = "") -> Result:
        spec = spec.replace(return_indices=False)
        if x is not None:
            if input_shape and tuple(input_shape) != x.shape:
                raise SpecError("input.shape", list(x.shape), f"must equal input_shape {list(input_shape)}")
            input_shape = x.shape
        if not input_shape:
            raise SpecError("input_shape", [], "is needed when the input is not sent")
        input_shape = tuple(int(d) for d in input_shape)
        if any(d < 1 for d in input_shape):  # before the element count: negatives would cancel
            raise SpecError("input_shape", list(input_shape), "every dimension must be >= 1")
        self._check_elements("input_shape", input_shape)  # the gradient we would allocate
        dtype = grad_output.dtype.name
        if dtype not in FLOAT_DTYPES:
            raise SpecError("grad_output.dtype", dtype, f"must be one of {', '.join(FLOAT_DTYPES)}")
        self._check_result_bytes("input_shape", input_shape, math.prod(input_shape) * grad_output.dtype.itemsize)
        g = self.resolve(spec, input_shape, None, "input")
        if grad_output.shape != g.output_shape:
            raise SpecError("grad_output.shape", list(grad_output.shape),
                            f"must equal the forward output shape {list(g.output_shape)}")
        if spec.mode == "lp" and x is None:
            raise SpecError("input", None, "lp backward needs the forward input")
        if x is not None and spec.mode != "avg" and x.dtype != grad_output.dtype:
            raise SpecError("input.dtype", x.dtype.name, f"must equal grad_output's dtype {dtype}")
        if spec.mode == "max":
            if indices is None and x is None:
                raise SpecError("indices", None, "max backward needs the forward indices or the input")
            if indices is not None:
                _check_indices(g, indices)
        inst, name, prov = self.choose(spec, dtype, backend, provider, op="backward")
        dx = inst.backward(spec, input_shape, grad_output,
                           x=x if spec.mode != "avg" else None,
                           indices=indices if spec.mode == "max" else None)
        return Result(dx, None, name, prov)

    def describe(self) -> dict:
        """What GetServerInfo reports about the backends."""
        out = []
        for slot in self.slots.values():
            entry = {"name": slot.name, "available": slot.available, "reason": slot.reason,
                     "providers": list(slot.providers), "isa": "", "threads": 0}
            if slot.available:
                inst = slot.instances.get(slot.providers[0])
                entry["threads"] = getattr(inst, "threads", 0) or 0
                if hasattr(slot.cls, "isa"):
                    entry["isa"] = slot.cls.isa()
            out.append(entry)
        return {"default_backend": self.default_backend, "backends": out, "max_elements": self.max_elements,
                "policy": self.policy.describe(), "policy_source": self.policy.source}


def _check_indices(g: Geometry, indices: np.ndarray) -> None:
    """Every argmax offset must point into its own (batch, channel) plane of the input.

    A backend is never handed an index that would read or write another plane's memory.
    """
    if indices.dtype.name != INDEX_DTYPE or indices.shape != g.output_shape:
        raise SpecError("indices", f"{indices.dtype.name}{list(indices.shape)}",
                        f"must be {INDEX_DTYPE} of the forward output shape {list(g.output_shape)}")
    plane = math.prod(g.in_spatial)
    r = g.rank
    if g.spec.layout == "channels_first":
        expected = np.arange(g.batch * g.channels, dtype=np.int64).reshape((g.batch, g.channels) + (1,) * r)
        ok = (indices >= 0) & (indices // plane == expected)
    else:
        n = np.arange(g.batch, dtype=np.int64).reshape((g.batch,) + (1,) * (r + 1))
        c = np.arange(g.channels, dtype=np.int64)
        ok = (indices >= 0) & (indices // (plane * g.channels) == n) & (indices % g.channels == c)
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        raise SpecError("indices", int(indices[tuple(bad)]),
                        f"at output position {bad.tolist()} points outside its own (batch, channel) plane of the input")
