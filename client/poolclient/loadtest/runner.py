"""A whole run: a sweep of load levels against the service, and optionally the echo baseline.

The baseline steps are interleaved with the service's (service at level 1, echo at level 1,
service at level 2, ...) rather than run after them, so slow drift of a shared machine falls on
both alike and the ratio between them stays meaningful.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import asdict, replace

from .. import __version__
from . import engine
from .echo import EchoServer


def run_sweep(target: str, payload, load: engine.Load, levels: list[float], *, baseline: str | None = None,
              echo_threads: int = 8, progress=None, start_method: str | None = None, scenario=None,
              command: str | None = None, label: str = "service") -> dict:
    """Run `load` at each of `levels` against `target`; with baseline="echo", each level is also run
    against a bare echo server (started here, stopped at the end) with the same bytes."""
    if baseline not in (None, "echo"):
        raise ValueError(f"baseline={baseline!r}: only 'echo' is offered")
    steps, base_steps = [], []
    load_before = os.getloadavg()
    echo = EchoServer(threads=echo_threads).start() if baseline == "echo" else None
    try:
        for level in levels:
            step_load = replace(load, level=level)
            steps.append(engine.run_step(target, payload, step_load, label=label, start_method=start_method,
                                         progress=_tagged(progress, label, step_load)))
            if echo is not None:
                base_steps.append(engine.run_step(echo.target, payload.for_echo(), step_load, label="baseline",
                                                  start_method=start_method,
                                                  progress=_tagged(progress, "baseline", step_load)))
    finally:
        if echo is not None:
            echo.stop()
    rep = make_report(target, payload, load, steps, base_steps or None, scenario=scenario, command=command)
    # other work on the machine skews everything: say how busy it was (1-minute load average)
    rep["host"]["loadavg_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    return rep


def _tagged(progress, label, load):
    if progress is None:
        return None
    return lambda counters: progress({**counters, "target": label, "model": load.model, "level": load.level})


def overhead(steps: list[dict], base: list[dict]) -> list[dict]:
    """Per level: how much slower (latency) and less (throughput) the service is than the echo."""
    out = []
    for s, b in zip(steps, base):
        row = {"level": s["level"]}
        for p in ("p50", "p99"):
            sv, bv = s["latency_ms"][p], b["latency_ms"][p]
            row[f"{p}_ratio"] = sv / bv if sv and bv else None
        row["throughput_ratio"] = (s["throughput_rps"] / b["throughput_rps"]) if b["throughput_rps"] else None
        out.append(row)
    return out


def make_report(target, payload, load, steps, base_steps=None, *, scenario=None, command=None) -> dict:
    import grpc

    report = {
        "tool": "poolclient loadtest",
        "version": __version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "target": target,
        "host": {"node": platform.node(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                 "grpcio": grpc.__version__, "platform": platform.platform()},
        "api": payload.api,
        "method": payload.method,
        "streaming": payload.streaming,
        "request_bytes": payload.request_bytes,
        "expected_reply_bytes": payload.reply_bytes,
        "description": payload.description,
        "scenario": scenario.to_dict() if scenario is not None else None,
        "load": asdict(load),
        "steps": steps,
        "baseline": None,
    }
    if base_steps:
        report["baseline"] = {"kind": "echo", "steps": base_steps, "overhead": overhead(steps, base_steps)}
    return report
