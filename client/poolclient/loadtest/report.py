"""Reports: the table printed at the end, the JSON file (everything, histograms included) and
the CSV file (one row per target and level, for spreadsheets)."""

from __future__ import annotations

import csv
import json
import os

CSV_FIELDS = ["target", "model", "level", "arrivals", "duration_s", "sent", "ok", "errors", "throughput_rps",
              "mb_out_per_s", "mb_in_per_s", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "mean_ms",
              "send_lag_p99_ms", "client_cpu_cores", "client_max_process_busy", "checks", "wrong_answers"]


def _all_steps(report: dict):
    yield from report["steps"]
    if report.get("baseline"):
        yield from report["baseline"]["steps"]


def _row(s: dict) -> dict:
    lat = s["latency_ms"]
    busy = s["client"]["cpu_busy_per_process"]
    return {
        "target": s["target"], "model": s["model"], "level": s["level"], "arrivals": s["arrivals"] or "",
        "duration_s": round(s["duration_s"], 3), "sent": s["sent"], "ok": s["ok"],
        "errors": ";".join(f"{k}={v}" for k, v in s["errors"].items()),
        "throughput_rps": round(s["throughput_rps"], 2),
        "mb_out_per_s": round(s["bytes_out_per_s"] / 1e6, 3), "mb_in_per_s": round(s["bytes_in_per_s"] / 1e6, 3),
        "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "p99.9_ms": lat["p99.9"],
        "max_ms": lat["max"], "mean_ms": None if lat["mean"] is None else round(lat["mean"], 4),
        "send_lag_p99_ms": (s["send_lag_ms"] or {}).get("p99"),
        "client_cpu_cores": round(s["client"]["cpu_cores_used"], 3),
        "client_max_process_busy": round(max(busy), 3) if busy else None,
        "checks": s["checks"]["done"], "wrong_answers": s["checks"]["failed"],
    }


def write_json(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def read_json(path: str) -> dict:
    with open(path) as f:
        report = json.load(f)
    if "steps" not in report:
        raise ValueError(f"{path}: not a poolclient loadtest report (no 'steps')")
    return report


def write_csv(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for s in _all_steps(report):
            w.writerow(_row(s))


def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def table(report: dict) -> str:
    """The human summary: one line per target and level, then overhead ratios, notes, errors."""
    level_name = "rate/s" if report["load"]["model"] == "open" else "conc"
    head = (f"{'target':8} {level_name:>7} {'ok':>8} {'err':>6} {'req/s':>9} {'MB/s':>8} {'p50':>8} {'p90':>8} "
            f"{'p99':>8} {'p99.9':>8} {'max':>8} {'cli cpu':>8}")
    la = report["host"].get("loadavg_1min")
    lines = [f"{report['description']}  [{report['api']} {report['method']}]",
             f"{report['date']}  {report['host']['cpu_count']} CPUs" +
             (f", load average {la['before']:g} before, {la['after']:g} after" if la else ""),
             f"latency in ms; MB/s counts both directions; cli cpu = client cores busy", head, "-" * len(head)]
    base = report["baseline"]["steps"] if report.get("baseline") else []
    steps = sorted([(s, 0) for s in report["steps"]] + [(s, 1) for s in base], key=lambda e: (e[0]["level"], e[1]))
    steps = [s for s, _ in steps]
    for s in steps:
        lat = s["latency_ms"]
        mbs = (s["bytes_out_per_s"] + s["bytes_in_per_s"]) / 1e6
        lines.append(f"{s['target']:8} {s['level']:>7g} {s['ok']:>8} {sum(s['errors'].values()):>6} "
                     f"{s['throughput_rps']:>9.1f} {mbs:>8.1f} {_ms(lat['p50']):>8} {_ms(lat['p90']):>8} "
                     f"{_ms(lat['p99']):>8} {_ms(lat['p99.9']):>8} {_ms(lat['max']):>8} "
                     f"{s['client']['cpu_cores_used']:>8.2f}")
    if report.get("baseline"):
        lines.append("")
        lines.append(f"{report['steps'][0]['target']} / echo baseline:  " + "   ".join(
            f"{level_name} {o['level']:g}: p50 x{_ratio(o['p50_ratio'])} p99 x{_ratio(o['p99_ratio'])} "
            f"throughput x{_ratio(o['throughput_ratio'])}" for o in report["baseline"]["overhead"]))
    for s in steps:
        for code, n in s["errors"].items():
            lines.append(f"errors {s['target']} {level_name} {s['level']:g}: {code} x{n}: "
                         f"{s['error_examples'].get(code, '')[:160]}")
        for note in s["client"]["notes"]:
            lines.append(f"note {s['target']} {level_name} {s['level']:g}: {note}")
    checks = report["steps"][0]["checks"] if report["steps"] else None
    if checks is not None:
        if checks["enabled"]:
            what = f" ({checks['note']})" if checks["note"] else " with the reference"
            lines.append(f"spot checks: {sum(s['checks']['done'] for s in report['steps'])} replies compared{what}, "
                         f"{sum(s['checks']['failed'] for s in report['steps'])} wrong")
        else:
            lines.append(checks["note"] or "spot checks: off")
    return "\n".join(lines)


def _ratio(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def progress_line(c: dict) -> str:
    """The live line: where the step is, what has come back so far."""
    name = "rate" if c["model"] == "open" else "conc"
    if c["warming"]:
        return f"{c['target']} {name}={c['level']:g}: warming up"
    el = max(c["elapsed"], 1e-9)
    if c["duration"] is not None:
        where = f"{min(c['elapsed'], c['duration']):5.1f}/{c['duration']:g}s"
    else:
        where = f"{c['sent']}/{c['requests']} req"
    return (f"{c['target']} {name}={c['level']:g}: {where}  ok {c['ok']} ({c['ok'] / el:.0f}/s)  "
            f"errors {c['errors']}  {c['bytes'] / el / 1e6:.1f} MB/s")


def compare_table(a: dict, b: dict, names=("A", "B")) -> str:
    """Level by level, B against A: latency and throughput ratios (B / A)."""
    lines = [f"{names[0]}: {a['description']} [{a['api']}] {a['date']}",
             f"{names[1]}: {b['description']} [{b['api']}] {b['date']}",
             f"{'level':>7} {'p50 A':>8} {'p50 B':>8} {'p99 A':>8} {'p99 B':>8} {'req/s A':>9} {'req/s B':>9} "
             f"{'p50 B/A':>8} {'p99 B/A':>8} {'req/s B/A':>9}"]
    by_level = {s["level"]: s for s in b["steps"]}
    for sa in a["steps"]:
        sb = by_level.get(sa["level"])
        if sb is None:
            continue
        la, lb = sa["latency_ms"], sb["latency_ms"]
        r = lambda x, y: "-" if not x or not y else f"{y / x:.2f}"  # noqa: E731
        lines.append(f"{sa['level']:>7g} {_ms(la['p50']):>8} {_ms(lb['p50']):>8} {_ms(la['p99']):>8} "
                     f"{_ms(lb['p99']):>8} {sa['throughput_rps']:>9.1f} {sb['throughput_rps']:>9.1f} "
                     f"{r(la['p50'], lb['p50']):>8} {r(la['p99'], lb['p99']):>8} "
                     f"{r(sa['throughput_rps'], sb['throughput_rps']):>9}")
    return "\n".join(lines)
