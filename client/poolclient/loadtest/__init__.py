"""poolclient.loadtest: latency and throughput of a poolserve server under load.

    from poolclient.loadtest import Load, Scenario, build_payload, run_sweep, EchoServer

    payload = build_payload("native", STANDARD["resnet-stem"])
    report = run_sweep("127.0.0.1:50051", payload, Load("closed", duration=5), levels=[1, 2, 4, 8],
                       baseline="echo")
    print(table(report)); write_json(report, "out.json"); plot_report(report, "out/")

Workers are separate processes (started from a clean forkserver): a script that calls
run_sweep/run_step needs the usual ``if __name__ == "__main__":`` guard.

Modules: scenario (what a request computes), adapters (how it goes on the wire: native unary,
native stream, raw echo; the Open Inference Protocol hook), engine (processes, closed and open
loops, HDR histograms), echo (the baseline server and test double), runner (a sweep, with the
baseline interleaved), report (table, JSON, CSV), plots (PNG), cli (`poolclient loadtest`).
"""

# Imported on first use (PEP 562), so that `poolclient loadtest --help`, and the poolclient CLI
# that registers it, work without the loadtest extra's packages (hdrhistogram, matplotlib).
_EXPORTS = {
    "Payload": "adapters", "build_payload": "adapters:build", "EchoServer": "echo", "Load": "engine",
    "LoadError": "engine", "run_step": "engine", "plot_compare": "plots", "plot_report": "plots",
    "compare_table": "report", "read_json": "report", "table": "report", "write_csv": "report",
    "write_json": "report", "make_report": "runner", "run_sweep": "runner", "STANDARD": "scenario",
    "Scenario": "scenario",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, _, attr = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr or name)
    globals()[name] = value
    return value
