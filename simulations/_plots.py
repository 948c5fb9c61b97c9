"""The PNG plots of a scenario run (``sim run --out DIR``), from its JSON record.

* ``latency-cdf.png``: per label set (a placement, say), the CDF of the measured
  reconstruction latencies, solid, next to the CDF of their bounds, dashed;
* ``propagation.png``: the share of nodes a record has reached over time, next
  to its bound's curve (the overlay's shortest paths);
* ``world.png``: the custodians at their longitude and latitude, coloured by
  role, shaped by state.

A plot with nothing to show is not written.
"""

from __future__ import annotations

import pathlib
from typing import Any

ROLE_COLOURS = {"custodian": "#9e9e9e", "holder": "#1f77b4", "owner": "#2ca02c", "requester": "#2ca02c",
                "liar": "#d62728", "revoked": "#ff7f0e"}
STATE_MARKERS = {"up": "o", "crashed": "x", "cut off": "s", "down at the revocation": "v"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ValueError("the plots need matplotlib (installed by the project's own set-up)") from None
    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def check() -> None:
    """ValueError in one line when plots cannot be made here (before a run, not after it)."""
    _pyplot()


def _cdf(values: list[float]) -> tuple[list[float], list[float]]:
    xs = sorted(values)
    return xs, [(i + 1) / len(xs) for i in range(len(xs))]


def write_plots(record: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    plt = _pyplot()
    written = []
    title = f"{record['scenario']} ({record['mode']}, {record['nodes']} nodes, seed {record['seed']})"
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in record["measurements"]:
        if m["kind"] == "reconstruction" and m["seconds"] is not None:
            label = ", ".join(f"{k}={v}" for k, v in m.items()
                              if k not in ("kind", "seconds", "bound_s", "ratio")) or "all"
            groups.setdefault(label, []).append(m)
    if groups:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (label, ms) in enumerate(groups.items()):
            colour = f"C{i % 10}"
            ax.step(*_cdf([m["seconds"] * 1000 for m in ms]), where="post", color=colour, label=f"{label}")
            bounds = [m["bound_s"] * 1000 for m in ms if m["bound_s"] is not None]
            if bounds:
                ax.step(*_cdf(bounds), where="post", color=colour, linestyle="--", label=f"{label}: bound")
        ax.set(xlabel="reconstruction latency (ms)", ylabel="fraction of reconstructions", title=title, ylim=(0, 1.02))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "latency-cdf.png", plt))
    if record["series"]:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (name, points) in enumerate(record["series"].items()):
            if points:
                ts = [0.0] + [t * 1000 for t, _ in points]
                ys = [0.0] + [y for _, y in points]
                ax.step(ts, ys, where="post", color=f"C{i % 10}", linestyle="--" if "bound" in name else "-", label=name)
        ax.set(xlabel="time since publication (ms)", ylabel="fraction of nodes", title=title, ylim=(0, 1.02))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "propagation.png", plt))
    fig, ax = plt.subplots(figsize=(10, 5.5))
    seen: set[tuple[str, str]] = set()
    for s in record["sites"]:
        key = (s["role"], s["state"])
        ax.scatter(s["lon"], s["lat"], c=ROLE_COLOURS.get(s["role"], "#8c564b"), marker=STATE_MARKERS.get(s["state"], "D"),
                   s=40, label=f"{s['role']}, {s['state']}" if key not in seen else None, edgecolors="none")
        seen.add(key)
    ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude", ylabel="latitude", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    written.append(_save(fig, out / "world.png", plt))
    return written


def _save(fig: Any, path: pathlib.Path, plt: Any) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
