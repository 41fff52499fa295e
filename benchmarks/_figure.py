"""The run's picture: one PNG, a panel per figure that matters, only for scenarios that ran.

Each panel says in its title which way is better. Axes are logarithmic where
the strategies differ by orders of magnitude, and every bar carries its value,
so a 0.09 next to a 20 is not drawn as "about nothing". What a bar would hide
is drawn next to it: the crash scenario shows the computes the waiters ran
themselves beside the time they took, and churn shows the requests a strategy
shed. The run id and the machine are in the figure's title.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._base import ALL_STRATEGIES, Options, Results, Row

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LOWER = "lower is better"
HIGHER = "higher is better"

_EXTRA = [
    "asyncstampede-shared",
    "cashews-nolock",
    "asyncstampede-swr",
    "asyncstampede-plain",
    "asyncstampede-xfetch-published",
]
_ORDER = ALL_STRATEGIES + _EXTRA


def colour(strategy: str) -> str:
    """One colour per strategy, the same in every panel."""
    return f"C{_ORDER.index(strategy) % 10}" if strategy in _ORDER else "grey"


def _ok(rows: list[Row]) -> list[Row]:
    return [r for r in rows if "failed" not in r]


def _sorted(names: set[str]) -> list[str]:
    return sorted(names, key=lambda s: _ORDER.index(s) if s in _ORDER else len(_ORDER))


def _title(ax: Axes, text: str, better: str) -> None:
    ax.set_title(f"{text}\n({better})", fontsize=10)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or (abs(v) >= 1 and v == int(v)):
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


_MARKERS = ["o", "s", "D", "^", "v", "P", "X"]


def _plain_ticks(ax: Axes) -> None:
    """Log axes labelled 0.1, 1, 20 rather than 10^-1, 10^0, 2 x 10^1."""
    from matplotlib.axis import Axis
    from matplotlib.ticker import FuncFormatter

    def minor(axis: Axis) -> FuncFormatter:
        # Minor ticks named at 2 and 5 times a power of ten, enough to read
        # a long axis without overlaps; all of them on an axis shorter than
        # a decade, which may have no major tick to read by.
        def label(v: float, _: object) -> str:
            if v <= 0:
                return ""
            lo, hi = sorted(axis.get_view_interval())
            if lo > 0 and hi / lo < 10:
                return _fmt(v)
            leading = round(v / 10 ** math.floor(math.log10(v)))
            return _fmt(v) if leading in (2, 5) else ""

        return FuncFormatter(label)

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
            axis.set_minor_formatter(minor(axis))


def _bars(
    ax: Axes,
    names: list[str],
    values: list[float],
    *,
    log: bool,
    labels: list[str] | None = None,
) -> None:
    """Bars with their values written on them; on a log axis zero has no bar, only its label."""
    heights = [v if (v > 0 or not log) else math.nan for v in values]
    bars = ax.bar(names, heights, color=[colour(n) for n in names])
    if log:
        ax.set_yscale("log")
        _plain_ticks(ax)
    for bar, value, text in zip(bars, values, labels or [_fmt(v) for v in values], strict=True):
        y = bar.get_height() if value > 0 or not log else ax.get_ylim()[0]
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, y),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.tick_params(axis="x", rotation=25, labelsize=8)
    ax.grid(alpha=0.3, axis="y", which="both")


# ---------------------------------------------------------------- herd


def _herd_panels(results: Results) -> list[Callable[[Axes], None]]:
    herd = _ok(results.get("herd", []))
    if not herd:
        return []
    c_max = max(r["concurrency"] for r in herd)
    p = herd[0]["processes"]
    rows = [r for r in herd if r["concurrency"] == c_max]

    def lines(ax: Axes, field: Callable[[Row], float], title: str, better: str) -> None:
        skipped = []
        strategies = _sorted({r["strategy"] for r in rows})
        for n, s in enumerate(strategies):
            mine = sorted((r for r in rows if r["strategy"] == s), key=lambda r: r["compute_ms"])
            ys = [field(r) for r in mine]
            if all(y <= 0 for y in ys):
                skipped.append(s)  # nothing to draw on a log axis
                continue
            xs = [r["compute_ms"] for r in mine]
            # Equal figures would hide one line under another: the markers
            # shrink from one strategy to the next, so coinciding points show
            # as rings, and each line ends with its value.
            ax.plot(
                xs,
                ys,
                marker=_MARKERS[n % len(_MARKERS)],
                markersize=11 - 1.5 * n,
                label=s,
                color=colour(s),
                lw=2.5 if s == "asyncstampede" else 1.2,
                alpha=0.85,
            )
            ax.annotate(
                _fmt(ys[-1]),
                (xs[-1], ys[-1]),
                xytext=(6, 0),
                textcoords="offset points",
                fontsize=7,
                color=colour(s),
                va="center",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(x=0.12)  # room for the end values
        _plain_ticks(ax)
        ax.set_xlabel("compute duration D (ms)")
        ax.grid(alpha=0.3, which="both")
        _title(ax, f"herd ({p} processes x {c_max}): {title}", better)
        if skipped:
            ax.text(0.02, 0.02, "0 for " + ", ".join(skipped), transform=ax.transAxes, fontsize=8)

    def computes(ax: Axes) -> None:
        lines(
            ax, lambda r: float(r["computes_per_herd"]), "computes per herd", f"{LOWER}; 1 is ideal"
        )
        ax.legend(fontsize=8)

    def latency(ax: Axes) -> None:
        lines(ax, lambda r: float(r["p99_ms"] - r["compute_ms"]), "p99 latency minus D (ms)", LOWER)

    def commands(ax: Axes) -> None:
        lines(
            ax,
            lambda r: float(r["server_per_request"]),
            "Redis commands per request (server count)",
            LOWER,
        )

    return [computes, latency, commands]


# ---------------------------------------------------------------- hits


def _hits_panels(results: Results) -> list[Callable[[Axes], None]]:
    hits = [r for r in _ok(results.get("hits", [])) if r["strategy"] != "embedded"]
    if not hits:
        return []

    def panel(ax: Axes) -> None:
        names = [r["strategy"] for r in hits]
        x = list(range(len(names)))
        width = 0.4
        for offset, field, hatch, label in (
            (-width / 2, "ratio_to_bare_get", "", "each caller its own key"),
            (width / 2, "same_key_ratio", "//", "all callers on one key"),
        ):
            values = [float(r[field]) for r in hits]
            bars = ax.bar(
                [i + offset for i in x],
                values,
                width,
                color=[colour(n) for n in names],
                hatch=hatch,
                edgecolor="white" if hatch else None,
                label=label,
            )
            for bar, v in zip(bars, values, strict=True):
                ax.annotate(
                    f"{v:.2f}x",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_yscale("log")
        _plain_ticks(ax)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        # Named outside the plot, at the right edge, clear of the bars' labels.
        ax.text(1.01, 1.0, "bare\nGET", transform=ax.get_yaxis_transform(), fontsize=7, va="center")
        ax.set_xticks(x, names, rotation=25, fontsize=7)
        ax.grid(alpha=0.3, axis="y", which="both")
        # The legend tells the two columns apart by hatching, not colour.
        from matplotlib.patches import Patch

        ax.legend(
            handles=[
                Patch(facecolor="grey", label="each caller its own key"),
                Patch(facecolor="grey", hatch="//", edgecolor="white", label="all on one key"),
            ],
            fontsize=8,
            loc="upper left",
        )
        _title(ax, "hits: throughput as a multiple of a bare GET loop (log)", HIGHER)

    return [panel]


# ---------------------------------------------------------------- churn


def _churn_panels(results: Results) -> list[Callable[[Axes], None]]:
    churn = _ok(results.get("churn", []))
    if not churn:
        return []
    names = [r["strategy"] for r in churn]

    def computes(ax: Axes) -> None:
        values = [float(r["computes_per_1k"]) for r in churn]
        labels = [
            _fmt(v) + (f"\nshed {r['shed']:,}" if r["shed"] else "")
            for v, r in zip(values, churn, strict=True)
        ]
        _bars(ax, names, values, log=False, labels=labels)
        _title(ax, "churn: backend computes per 1,000 requests served", LOWER)

    def latency(ax: Axes) -> None:
        _bars(ax, names, [float(r["p99_ms"]) for r in churn], log=True)
        _title(ax, "churn: p99 latency (ms, log)", LOWER)

    return [computes, latency]


# ---------------------------------------------------------------- crash


def _crash_panels(results: Results, options: Options) -> list[Callable[[Axes], None]]:
    crash = _ok(results.get("crash", []))
    if not crash:
        return []
    names = [r["strategy"] for r in crash]
    cap = options.crash_cap

    def waited(ax: Axes) -> None:
        values, labels = [], []
        for r in crash:
            after = float(r["value_after_s"])
            if math.isinf(after):
                values.append(cap)
                labels.append(f"stuck > {cap:g} s")
            elif after < 0:
                values.append(0.0)
                labels.append("did not wait:\ncomputed itself")
            else:
                values.append(after)
                labels.append(f"{after:.2f} s")
        _bars(ax, names, values, log=False, labels=labels)
        for bar, r in zip(ax.patches, crash, strict=False):
            if math.isinf(float(r["value_after_s"])):
                bar.set_hatch("xx")
        ax.set_ylabel("seconds")
        _title(ax, "crash: holder killed; seconds until the waiters have a value", LOWER)

    def extra(ax: Axes) -> None:
        values = [float(r["extra_computes"]) if r["extra_computes"] != "?" else 0.0 for r in crash]
        labels = [
            _fmt(v) if r["extra_computes"] != "?" else "? (stuck)"
            for v, r in zip(values, crash, strict=True)
        ]
        _bars(ax, names, values, log=True, labels=labels)
        _title(ax, "crash: computes the waiters ran themselves (log)", f"{LOWER}; 1 is ideal")

    return [waited, extra]


# ---------------------------------------------------------------- steady, wakeup


def _steady_panels(results: Results) -> list[Callable[[Axes], None]]:
    steady = _ok(results.get("steady", []))
    plain = [r for r in steady if "read_rate" not in r]
    sweep = [r for r in steady if "read_rate" in r]
    panels: list[Callable[[Axes], None]] = []
    if plain:

        def latency(ax: Axes) -> None:
            _bars(ax, [r["strategy"] for r in plain], [float(r["p99_ms"]) for r in plain], log=True)
            _title(ax, "steady: p99 latency of a hot key's reads (ms, log)", LOWER)

        panels.append(latency)
    if sweep:

        def refreshes(ax: Axes) -> None:
            for s in _sorted({r["strategy"] for r in sweep}):
                mine = sorted(
                    (r for r in sweep if r["strategy"] == s), key=lambda r: r["read_rate"]
                )
                ax.plot(
                    [r["read_rate"] for r in mine],
                    [r["refreshes_per_ttl"] for r in mine],
                    marker="o",
                    label=s,
                    color=colour(s),
                )
            ax.set_xscale("log")
            _plain_ticks(ax)
            ax.set_ylim(bottom=0)
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
            ax.set_xlabel("reads per second")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
            _title(ax, "steady: refreshes per TTL period", f"{LOWER}; 1 is ideal")

        panels.append(refreshes)
    return panels


def _wakeup_panels(results: Results) -> list[Callable[[Axes], None]]:
    wakeup = _ok(results.get("wakeup", []))
    if not wakeup:
        return []

    def panel(ax: Axes) -> None:
        fields = ["p50_ms", "p90_ms", "p99_ms"]
        width = 0.8 / len(wakeup)
        for i, r in enumerate(wakeup):
            xs = [j + (i - (len(wakeup) - 1) / 2) * width for j in range(len(fields))]
            values = [float(r[f]) for f in fields]
            path = r["path"]
            tint = colour(path) if path in _ORDER else "grey"
            bars = ax.bar(xs, values, width, label=path, color=tint)
            for bar, v in zip(bars, values, strict=True):
                ax.annotate(
                    f"{v:.2f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xticks(range(len(fields)), ["p50", "p90", "p99"])
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        _title(ax, "wakeup: compute returned -> waiter in another process resumed", LOWER)

    return [panel]


# ---------------------------------------------------------------- the figure


def plot(results: Results, options: Options, run_id: str, host: dict[str, Any], path: Path) -> bool:
    """Write the PNG to *path*; False (and nothing written) without matplotlib or panels."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        *_herd_panels(results),
        *_hits_panels(results),
        *_churn_panels(results),
        *_crash_panels(results, options),
        *_steady_panels(results),
        *_wakeup_panels(results),
    ]
    if not panels:
        return False
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.6 * nrows + 0.8), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for draw, ax in zip(panels, flat, strict=False):
        draw(ax)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"asyncstampede benchmarks, run {run_id}"
        + (" (--quick)" if options.quick else "")
        + f": {options.processes} processes\n"
        f"{host['cpus']} CPUs, {host['platform']}, Python {host['python']}, "
        f"Redis {host['server']}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
