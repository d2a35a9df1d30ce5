"""Execution providers and the bounded cache of InferenceSessions.

A session is created once per (graph, providers) and reused across requests and threads
(``InferenceSession.run`` is thread-safe).  The cache is a small LRU: a server sees few distinct
specs, and a session holds its graph's memory plan.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, Sequence

import onnxruntime as ort

from ..base import Unsupported

# short names accepted wherever a provider is named
ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# providers poolserve has graphs for; ORT builds may list others (Azure, ...) that do not pool
POOLING_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# the nodes that touch every element of a graph (graphs.py): on a provider other than the CPU
# each must run on that provider.  ONNX Runtime appends the CPU provider to every session and
# gives it whatever the named one has no kernel for, and get_providers() still lists the named
# one first: without this check a CUDA session could pool on the CPU unseen.  Shape arithmetic
# (Shape, Slice, Concat of int64 shapes) may stay on the CPU: ONNX Runtime keeps it there.
WORK_OPS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalMaxPool", "GlobalAveragePool", "GlobalLpPool",
                      "ConvTranspose", "ScatterElements"})


def available_providers() -> tuple[str, ...]:
    """The pooling providers this onnxruntime build offers, best first."""
    have = set(ort.get_available_providers())
    return tuple(p for p in POOLING_PROVIDERS if p in have)


def resolve_providers(providers: str | Sequence[str] | None) -> tuple[str, ...]:
    """Full provider names, each checked against this installation: never a silent fallback."""
    if providers is None:
        return ("CPUExecutionProvider",)
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    names = tuple(ALIASES.get(p.lower(), p) for p in providers)
    if not names:
        raise Unsupported("no ONNX Runtime provider named")
    have = available_providers()
    for name in names:
        if name not in have:
            raise Unsupported(f"ONNX Runtime provider {name} is not available here; available: "
                              f"{', '.join(have)} (CUDA needs the onnxruntime-gpu package, `pip install "
                              f"poolserve[gpu]`, and a visible GPU)")
    return names


class SessionCache:
    """LRU of InferenceSessions for one provider list, keyed by graph key (hashable; its
    readable name is only built when a session is created -- it costs more than the lookup)."""

    def __init__(self, providers: tuple[str, ...], threads: int, capacity: int = 64):
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: must be >= 1")
        self.providers = providers
        self.capacity = capacity
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = threads
        self._options.inter_op_num_threads = 1  # one node runs at a time in these graphs
        self._options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._options.log_severity_level = 3  # errors only: unsupported graphs are reported by us
        if providers[0] != "CPUExecutionProvider":
            # which provider runs each node, for _off_provider
            self._options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        self._sessions: OrderedDict[Hashable, ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: Hashable, name: Callable[[], str], model_bytes: Callable[[], bytes]) -> ort.InferenceSession:
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
                return session
        # built outside the lock: two threads may race to build the same session, and one wins
        session = self._create(name(), model_bytes())
        with self._lock:
            session = self._sessions.setdefault(key, session)
            self._sessions.move_to_end(key)
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        return session

    def _create(self, name: str, model: bytes) -> ort.InferenceSession:
        try:
            session = ort.InferenceSession(model, sess_options=self._options, providers=list(self.providers))
        except (ort.capi.onnxruntime_pybind11_state.NotImplemented,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
            # a dtype/operator pair this ONNX Runtime has no kernel for
            raise Unsupported(f"ONNX Runtime {ort.__version__} cannot run graph {name} on "
                              f"{', '.join(self.providers)}: {str(e).splitlines()[0]}; the c backend can") from e
        got = session.get_providers()
        if got[0] != self.providers[0]:
            raise Unsupported(f"ONNX Runtime gave graph {name} the providers {got}, not {self.providers[0]}; "
                              f"refusing a silent fallback")
        off = self._off_provider(session)
        if off:
            raise Unsupported(f"ONNX Runtime {ort.__version__} would run {', '.join(off)} of graph {name} on "
                              f"another provider than {self.providers[0]}; refusing a silent fallback "
                              f"(the c backend or provider cpu runs it)")
        return session

    def _off_provider(self, session: ort.InferenceSession) -> list[str]:
        """The work nodes (WORK_OPS) that the session gives to another provider than the first."""
        if self.providers[0] == "CPUExecutionProvider":
            return []
        return sorted({f"{node.op_type} ({sub.ep_name})" for sub in session.get_provider_graph_assignment_info()
                       if sub.ep_name != self.providers[0]
                       for node in sub.get_nodes() if node.op_type in WORK_OPS})


def model_file(model_dir: str | Path, name: str) -> Path:
    return Path(model_dir) / f"{name}.onnx"
