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

from .adapters import Payload, build as build_payload
from .echo import EchoServer
from .engine import Load, LoadError, run_step
from .plots import plot_compare, plot_report
from .report import compare_table, read_json, table, write_csv, write_json
from .runner import make_report, run_sweep
from .scenario import STANDARD, Scenario

__all__ = ["Payload", "build_payload", "EchoServer", "Load", "LoadError", "run_step", "plot_compare",
           "plot_report", "compare_table", "read_json", "table", "write_csv", "write_json", "make_report",
           "run_sweep", "STANDARD", "Scenario"]
