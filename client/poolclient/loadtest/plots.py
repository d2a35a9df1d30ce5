"""PNG plots with matplotlib's Agg backend (no display needed).

percentiles.png:          latency p50 / p90 / p99 / p99.9 / max against the load level
latency_throughput.png:   p50 and p99 latency against achieved throughput (the "hockey stick")
latency_distribution.png: each level's whole latency distribution from its HDR histogram, by
                          percentile on a 1/(1-p) axis, so the tail (99.9 %, 99.99 %) gets room

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


DIST_PCTS = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999]


def distribution_plot(series, path: str, title: str, model: str) -> str:
    from . import histo

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    levels = sorted({s["level"] for _, steps in series for s in steps})
    cmap = plt.get_cmap("viridis")
    unit = "/s" if model == "open" else " in flight"
    right = 10.0
    for k, (name, steps) in enumerate(series):
        for s in steps:
            h = histo.decode(s["histogram"])
            n = h.get_total_count()
            if n == 0:
                continue
            # only percentiles the sample can resolve: 99.99 % of 500 requests is just the max
            pcts = [p for p in DIST_PCTS if p == 0 or 100.0 / (100.0 - p) <= n] + [100.0]
            # the max sits where the sample runs out: 1/(1-p) = n
            xs = [1.0 / (1.0 - p / 100.0) if p < 100 else max(n, 2.0) for p in pcts]
            ys = [h.get_value_at_percentile(p) / 1e3 if p < 100 else h.get_max_value() / 1e3 for p in pcts]
            right = max(right, xs[-1])
            color = cmap(levels.index(s["level"]) / max(1, len(levels) - 1) * 0.9)
            ax.plot(xs, ys, STYLES[k % len(STYLES)], color=color, marker=".", ms=3,
                    label=f"{name} {s['level']:g}{unit}", alpha=1.0 if k == 0 else 0.6)
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.set_yscale("log")
    names = ["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
    ticks = [t for t in (1, 2, 10, 100, 1000, 10000, 100000) if t <= right * 1.5]
    ax.set_xlim(0.85, right * 1.5)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ticker.FixedFormatter(names[:len(ticks)]))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    _plain_axes(ax)
    ax.set_xlabel("percentile (last point: max)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
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
            latency_throughput_plot(series, os.path.join(out_dir, f"{stem}latency_throughput.png"), _title(report)),
            distribution_plot(series, os.path.join(out_dir, f"{stem}latency_distribution.png"), _title(report),
                              model)]


def plot_compare(a: dict, b: dict, out_dir: str, names=("A", "B")) -> list[str]:
    """Two runs on the same axes: A solid, B dashed (their baselines, if any, dotted)."""
    series = series_of(a, names[0] + ": ")[:1] + series_of(b, names[1] + ": ")[:1]
    series += series_of(a, names[0] + ": ")[1:] + series_of(b, names[1] + ": ")[1:]
    title = f"{names[0]}: {_title(a)}\n{names[1]}: {_title(b)}"
    model = a["load"]["model"] if a["load"]["model"] == b["load"]["model"] else "mixed"
    return [percentiles_plot(series, os.path.join(out_dir, "compare_percentiles.png"), title, model),
            latency_throughput_plot(series, os.path.join(out_dir, "compare_latency_throughput.png"), title),
            distribution_plot(series, os.path.join(out_dir, "compare_latency_distribution.png"), title, model)]
