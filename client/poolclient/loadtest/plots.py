"""PNG plots with matplotlib's Agg backend (no display needed).

percentiles.png:          latency p50 / p90 / p99 / p99.9 / max against the load level
latency_throughput.png:   p50 and p99 latency against achieved throughput (the "hockey stick")

Each plot draws several series: the service and its echo baseline, or two runs for --compare.
"""

from __future__ import annotations

import os

PCTS = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99.9"), ("max", "max")]
COLORS = {"p50": "tab:blue", "p90": "tab:green", "p99": "tab:orange", "p99.9": "tab:red", "max": "tab:purple"}
STYLES = ["-", "--", ":", "-."]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: files only, works without a display
    import matplotlib.pyplot as plt

    return plt


def _plain_axes(ax, xticks=None):
    """Log axes labelled 1, 2, 4 and 0.5, 1, 2 rather than 2^0 and 5x10^-1."""
    from matplotlib import ticker

    fmt = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if xticks:
        ax.set_xticks(sorted(set(xticks)))
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def series_of(report: dict, prefix: str = "") -> list[tuple[str, list[dict]]]:
    label = report["steps"][0]["target"] if report["steps"] else "service"
    out = [(f"{prefix}{label}".strip(), report["steps"])]
    if report.get("baseline"):
        out.append((f"{prefix}echo baseline".strip(), report["baseline"]["steps"]))
    return out


def _level_label(model: str) -> str:
    return "offered rate (requests/s)" if model == "open" else "concurrency (requests in flight)"


def percentiles_plot(series, path: str, title: str, model: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for k, (name, steps) in enumerate(series):
        xs = [s["level"] for s in steps]
        for key, label in PCTS:
            ys = [s["latency_ms"][key] for s in steps]
            if all(y is None for y in ys):
                continue
            ax.plot(xs, ys, STYLES[k % len(STYLES)], marker="o", ms=3, color=COLORS[key],
                    label=f"{label} {name}", alpha=1.0 if k == 0 else 0.65)
    levels = [s["level"] for _, steps in series for s in steps]
    if len(set(levels)) > 2:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_axes(ax, levels)
    ax.set_xlabel(_level_label(model))
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, plt, path)


def latency_throughput_plot(series, path: str, title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for k, (name, steps) in enumerate(series):
        xs = [s["throughput_rps"] for s in steps]
        for key, color in (("p50", "tab:blue"), ("p99", "tab:orange")):
            ys = [s["latency_ms"][key] for s in steps]
            ax.plot(xs, ys, STYLES[k % len(STYLES)], marker="o", ms=4, color=color, label=f"{key} {name}",
                    alpha=1.0 if k == 0 else 0.65)
            if key == "p99":
                for s, x, y in zip(steps, xs, ys):
                    if y is not None:
                        ax.annotate(f"{s['level']:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    _plain_axes(ax)
    ax.set_xlabel("achieved throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title + "\n(points labelled with their concurrency or offered rate)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _save(fig, plt, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _title(report: dict) -> str:
    import textwrap

    text = f"{report['description']} [{report['api']}], {report['date'][:16].replace('T', ' ')} UTC"
    return "\n".join(textwrap.wrap(text, 100))


def plot_report(report: dict, out_dir: str, stem: str = "") -> list[str]:
    series = series_of(report)
    model = report["load"]["model"]
    return [percentiles_plot(series, os.path.join(out_dir, f"{stem}percentiles.png"), _title(report), model),
            latency_throughput_plot(series, os.path.join(out_dir, f"{stem}latency_throughput.png"), _title(report))]


def plot_compare(a: dict, b: dict, out_dir: str, names=("A", "B")) -> list[str]:
    """Two runs on the same axes: A solid, B dashed (their baselines, if any, dotted)."""
    series = series_of(a, names[0] + ": ")[:1] + series_of(b, names[1] + ": ")[:1]
    series += series_of(a, names[0] + ": ")[1:] + series_of(b, names[1] + ": ")[1:]
    title = f"{names[0]}: {_title(a)}\n{names[1]}: {_title(b)}"
    model = a["load"]["model"] if a["load"]["model"] == b["load"]["model"] else "mixed"
    return [percentiles_plot(series, os.path.join(out_dir, "compare_percentiles.png"), title, model),
            latency_throughput_plot(series, os.path.join(out_dir, "compare_latency_throughput.png"), title)]
