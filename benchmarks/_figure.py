"""The run's picture: one PNG, a panel per figure that matters, only for scenarios that ran.

Each panel says in its title which way is better. Strategies are rows, each
named in full down the left. Where strategies differ by orders of magnitude
the axis is logarithmic and each figure is a dot: on a log axis a bar's
length means nothing, while the distance between two dots is their ratio.
Elsewhere bars start at zero on a linear axis. Every dot, bar and line end
carries its value. What a figure would hide is drawn next to it: crash shows
the computes the waiters ran themselves beside the time they took, marks a
strategy that did not wait as not comparable and one stuck at the cap as
"at least"; churn shows the requests a strategy shed; hits names the bare
GET each ratio is against; wakeup says how many runs its percentiles rest
on; herd points that coincide are drawn apart and each line's end is named. The run id
and the machine are in the figure's title.
"""

from __future__ import annotations

import math
import textwrap
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

# Points between herd lines drawn at one value, and between their end labels.
_GAP = 3.5
_LABEL_GAP = 9.0
# Behind a value written over grid and reference lines, so they do not cross it.
_CLEAR = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5}
# Width of a character of the 7-8 pt labels, in points (DejaVu Sans, generous).
_CHAR = 4.6


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


def _kilo(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


_MARKERS = ["o", "s", "D", "^", "v", "P", "X"]


def _plain_ticks(ax: Axes) -> None:
    """Log axes labelled 0.1, 1, 20 rather than 10^-1, 10^0, 2 x 10^1."""
    from matplotlib.axis import Axis
    from matplotlib.ticker import FuncFormatter

    def minor(axis: Axis) -> FuncFormatter:
        # Minor ticks named at 2 and 5 times a power of ten, enough to read
        # a long axis; all of them on an axis shorter than a decade, which
        # may have no major tick to read by; none where a decade is too
        # short for "1,000" and "2,000" side by side (10 pt tick labels).
        def label(v: float, _: object) -> str:
            if v <= 0:
                return ""
            lo, hi = sorted(axis.get_view_interval())
            if lo > 0 and hi / lo < 10:
                return _fmt(v)
            if lo > 0 and axis is ax.xaxis:
                per_decade = _width_pt(ax) / math.log10(hi / lo)
                if 0.3 * per_decade < 6.5 * len(_fmt(hi)) + 4:
                    return ""
            leading = round(v / 10 ** math.floor(math.log10(v)))
            return _fmt(v) if leading in (2, 5) else ""

        return FuncFormatter(label)

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
            axis.set_minor_formatter(minor(axis))


def _width_pt(ax: Axes) -> float:
    """The panel's plotting width in points (before the final layout, near enough)."""
    return float(ax.bbox.width * 72 / ax.figure.dpi)


def _height_pt(ax: Axes) -> float:
    """The panel's plotting height in points (before the final layout, near enough)."""
    return float(ax.bbox.height * 72 / ax.figure.dpi)


def _log_span(ax: Axes, values: list[float], *, include: float | None, label_chars: int) -> None:
    """Set the limits of a log x axis showing *values* (and *include*).

    At least a decade, so a small spread is not blown up to the panel's
    width; a little room on the left; on the right, room for the labels of
    *label_chars* characters written beside the dots.
    """
    shown = [v for v in values if v > 0] + ([include] if include else [])
    lo, hi = min(shown, default=1.0), max(shown, default=1.0)
    decades = max(math.log10(hi / lo), 1.0)
    mid = math.log10(lo * hi) / 2
    left, right = mid - decades / 2, mid + decades / 2
    if math.log10(lo) < left or math.log10(hi) > right:  # the spread is at least a decade
        left, right = math.log10(lo), math.log10(hi)
    share = min(0.45, (8 + _CHAR * label_chars) / _width_pt(ax))
    pad = 0.06 * (right - left)
    extra = (right - left + pad) * share / (1 - share)
    ax.set_xlim(10 ** (left - pad), 10 ** (right + extra))


def _beside(ax: Axes, text: str, xy: tuple[float, float], dx: float = 5, **style: Any) -> None:
    """Write *text* *dx* points right of the data point *xy* (left of it if negative)."""
    style = {"fontsize": 8, "va": "center", "ha": "left" if dx >= 0 else "right", **style}
    ax.annotate(text, xy, xytext=(dx, 0), textcoords="offset points", **style)


def _rows(ax: Axes, names: list[str]) -> None:
    """Strategies as rows, top to bottom in *names*' order, each named in full."""
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)


def _dots(
    ax: Axes,
    names: list[str],
    values: list[float],
    labels: list[str] | None = None,
    *,
    include: float | None = None,
) -> None:
    """A dot per strategy on a log axis with its value beside it (a Cleveland dot plot).

    A figure a log axis cannot show (zero or less) gets no dot, only its label
    in a box mid-row. *include* is a value the axis must show (a reference line).
    """
    texts = labels or [_fmt(v) for v in values]
    ax.set_xscale("log")
    for i, (name, v, text) in enumerate(zip(names, values, texts, strict=True)):
        if v > 0:
            ax.plot([v], [i], "o", markersize=9, color=colour(name), zorder=3)
            _beside(ax, text, (v, i), 7, bbox=_CLEAR)
        else:
            ax.annotate(
                text,
                (0.5, i),
                xycoords=("axes fraction", "data"),
                ha="center",
                va="center",
                fontsize=8,
                color="dimgrey",
                style="italic",
                bbox={"facecolor": "white", "edgecolor": "0.75", "pad": 2},
            )
    _rows(ax, names)
    beside = [t for v, t in zip(values, texts, strict=True) if v > 0]
    _log_span(ax, values, include=include, label_chars=max(map(len, beside), default=0))
    _plain_ticks(ax)
    ax.grid(alpha=0.3, axis="x", which="both")
    ax.grid(alpha=0.5, axis="y", ls=":")


def _hbars(ax: Axes, names: list[str], values: list[float], labels: list[str]) -> None:
    """Bars from zero on a linear axis, one row per strategy, each with its value at its end."""
    bars = ax.barh(range(len(names)), values, height=0.6, color=[colour(n) for n in names])
    for bar, text in zip(bars, labels, strict=True):
        _beside(ax, text, (bar.get_width(), bar.get_y() + bar.get_height() / 2))
    _rows(ax, names)
    top = max(values) or 1.0
    share = min(0.45, (8 + _CHAR * max(len(t) for t in labels)) / _width_pt(ax))
    ax.set_xlim(0, top / (1 - share))
    ax.grid(alpha=0.3, axis="x")


# ---------------------------------------------------------------- herd


def _end_labels(ax: Axes, ends: list[tuple[str, float, str, float]]) -> None:
    """Write each line's end value just right of the plot, pushed apart so none covers another.

    *ends* holds (strategy, y, text, drawn offset in points). The labels are
    placed by their heights in points on the panel as it is now (the final
    layout moves them little) and spread to at least `_LABEL_GAP` apart.
    """
    lo, hi = (math.log10(v) for v in ax.get_ylim())
    height = _height_pt(ax)
    at = sorted(
        ((math.log10(y) - lo) / (hi - lo) * height + shift, s, y, text)
        for s, y, text, shift in ends
    )
    placed: list[float] = []
    for want, *_ in at:
        placed.append(max(want, placed[-1] + _LABEL_GAP) if placed else want)
    # Spread from the bottom only pushes labels up; centre the pushed ones on
    # where they belong, so a group of equal values sits around its value.
    drift = (sum(placed) - sum(w for w, *_ in at)) / len(at)
    if drift > 0:
        placed = [p - drift for p in placed]
        for i in range(1, len(placed)):  # centring must not undo the spreading
            placed[i] = max(placed[i], placed[i - 1] + _LABEL_GAP)
    for (_, s, y, text), where in zip(at, placed, strict=True):
        base = (math.log10(y) - lo) / (hi - lo) * height
        ax.annotate(
            text,
            (1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(4, where - base),
            textcoords="offset points",
            fontsize=7,
            color=colour(s),
            va="center",
            annotation_clip=False,
        )


def _herd_panels(results: Results) -> list[Callable[[Axes], None]]:
    herd = _ok(results.get("herd", []))
    if not herd:
        return []
    c_max = max(r["concurrency"] for r in herd)
    p = herd[0]["processes"]
    rows = [r for r in herd if r["concurrency"] == c_max]

    def lines(ax: Axes, field: Callable[[Row], float], title: str, better: str) -> None:
        skipped = []
        series: dict[str, tuple[list[float], list[float]]] = {}
        for s in _sorted({r["strategy"] for r in rows}):
            mine = sorted((r for r in rows if r["strategy"] == s), key=lambda r: r["compute_ms"])
            ys = [field(r) for r in mine]
            if all(y <= 0 for y in ys):
                skipped.append(s)  # nothing to draw on a log axis
                continue
            series[s] = ([float(r["compute_ms"]) for r in mine], ys)
        _title(ax, f"herd ({p} processes x {c_max}): {title}", better)
        if not series:
            ax.text(0.5, 0.5, "0 for all: nothing to draw on a log axis", ha="center", va="center")
            ax.set_axis_off()
            return
        ax.set_xscale("log")
        ax.set_yscale("log")
        all_x = [x for xs, _ in series.values() for x in xs]
        left, right = math.log10(min(all_x)), math.log10(max(all_x))
        pad = 0.05 * max(right - left, 1.0)
        ax.set_xlim(10 ** (left - pad), 10 ** (right + pad))
        # Up the side at least a decade, so lines a few percent apart are not
        # spread out.
        shown = [y for _, ys in series.values() for y in ys if y > 0]
        bottom, top = math.log10(min(shown)), math.log10(max(shown))
        middle, half = (bottom + top) / 2, max(top - bottom, 1.0) / 2 + 0.1
        ax.set_ylim(10 ** (middle - half), 10 ** (middle + half))
        per_pt = 2 * half / _height_pt(ax)  # decades per point, near enough

        def shift(s: str, k: int) -> float:
            """Points the k-th point of *s* is drawn above its value.

            Points at one value would hide one another: each is drawn a few
            points above or below the others there, in the legend's order
            (the axis label says so). Points alone stay where they are.
            """
            x, y = series[s][0][k], series[s][1][k]
            mates = [
                t
                for t, (tx, ty) in series.items()
                if any(
                    a == x and math.isclose(b, y, rel_tol=0.02) for a, b in zip(tx, ty, strict=True)
                )
            ]
            return -(mates.index(s) - (len(mates) - 1) / 2) * _GAP

        moved = False
        ends = []
        for n, (s, (xs, ys)) in enumerate(series.items()):
            shifts = [shift(s, k) for k in range(len(ys))]
            moved = moved or any(shifts)
            ax.plot(
                xs,
                [y * 10 ** (d * per_pt) for y, d in zip(ys, shifts, strict=True)],
                marker=_MARKERS[n % len(_MARKERS)],
                markersize=6,
                label=s,
                color=colour(s),
                lw=2.5 if s == "asyncstampede" else 1.3,
                alpha=0.9,
            )
            if ys[-1] > 0:  # each end is labelled, named where several end at one value
                alike = [t for t in series if math.isclose(series[t][1][-1], ys[-1], rel_tol=0.02)]
                text = _fmt(ys[-1]) + (f" {s}" if len(alike) > 1 else "")
                ends.append((s, ys[-1], text, shifts[-1]))
        _end_labels(ax, ends)
        _plain_ticks(ax)
        notes = ["compute duration D (ms)"]
        if moved:
            notes.append("points at one value drawn a few pt apart")
        if skipped:
            notes.append("0 (not drawn on a log axis): " + ", ".join(skipped))
        ax.set_xlabel("\n".join(notes))
        ax.grid(alpha=0.3, which="both")

    def computes(ax: Axes) -> None:
        lines(
            ax, lambda r: float(r["computes_per_herd"]), "computes per herd", f"{LOWER}; 1 is ideal"
        )
        if ax.get_lines():
            ax.legend(fontsize=8)

    def latency(ax: Axes) -> None:
        lines(ax, lambda r: float(r["p99_ms"] - r["compute_ms"]), "p99 latency minus D (ms)", LOWER)

    def commands(ax: Axes) -> None:
        lines(
            ax,
            lambda r: float(r["server_per_request"]),
            "Redis commands\nper request, counted by the server",
            LOWER,
        )

    return [computes, latency, commands]


# ---------------------------------------------------------------- hits


def _hits_panels(results: Results) -> list[Callable[[Axes], None]]:
    hits = [r for r in _ok(results.get("hits", [])) if r["strategy"] != "embedded"]
    if not hits:
        return []

    def panel(ax: Axes) -> None:
        from matplotlib.lines import Line2D

        names = [r["strategy"] for r in hits]
        ax.set_xscale("log")
        values = []
        # Two dots a row: filled, each caller on its own key (the headline);
        # hollow, all callers on one key.
        for i, r in enumerate(hits):
            tint = colour(r["strategy"])
            for dy, field, face in (
                (-0.17, "ratio_to_bare_get", tint),
                (0.17, "same_key_ratio", "white"),
            ):
                v = float(r[field])
                values.append(v)
                ax.plot(
                    [v],
                    [i + dy],
                    "o",
                    markersize=8,
                    color=tint,
                    markerfacecolor=face,
                    markeredgewidth=1.6,
                    zorder=3,
                )
                _beside(ax, f"{v:.2f}x", (v, i + dy), 6, fontsize=7, bbox=_CLEAR)
        _rows(ax, names)
        _log_span(ax, values, include=1.0, label_chars=6)
        _plain_ticks(ax)
        ax.grid(alpha=0.3, axis="x", which="both")
        ax.grid(alpha=0.5, axis="y", ls=":")
        # Each ratio is against the bare GET rounds paired with that
        # strategy's own rounds, not against one bare GET figure: the line at
        # 1 is each row's own bare GET, named so, and the bare figures'
        # spread is written out, so a 1.1x is not taken for beating the
        # network. A row of headroom on top holds the line's name and the legend.
        ax.set_ylim(len(names) - 0.5, -1.5)
        ax.axvline(1.0, color="black", lw=0.9, ls="--")
        _beside(ax, "bare GET (paired)", (1.0, -1.0), -4, fontsize=7)
        bare = [float(r["bare_rps"]) for r in hits]
        spread = f"{_kilo(min(bare))}-{_kilo(max(bare))}"
        ax.set_xlabel(
            "requests/s / the paired bare GET's requests/s\n"
            f"(the bare GET loops ran at {spread} requests/s across rows)",
            fontsize=8,
        )
        ax.legend(
            handles=[
                Line2D([], [], ls="", marker="o", color="black", label="each caller its own key"),
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    color="black",
                    markerfacecolor="white",
                    markeredgewidth=1.6,
                    label="all callers on one key",
                ),
            ],
            fontsize=7,
            loc="upper right",
        )
        _title(
            ax,
            "hits: throughput as a multiple of a bare GET (log)\n"
            "each against a bare GET loop run just before it, same processes",
            HIGHER,
        )

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
            _fmt(v) + (f" (shed {r['shed']:,} requests)" if r["shed"] else "")
            for v, r in zip(values, churn, strict=True)
        ]
        _hbars(ax, names, values, labels)
        _title(ax, "churn: backend computes per 1,000 requests served", LOWER)

    def latency(ax: Axes) -> None:
        _dots(ax, names, [float(r["p99_ms"]) for r in churn])
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
        from matplotlib.patches import Rectangle

        # Bars from zero for the strategies whose waiters waited. One stuck at
        # the cap gets a hatched bar to the cap and an arrow past it: its time
        # is at least the cap. One whose waiters did not wait (they computed
        # the value themselves) has no time to compare: no bar on the seconds
        # scale, a grey band across the row saying so, so an empty row is not
        # read as "fastest".
        for i, r in enumerate(crash):
            after, tint = float(r["value_after_s"]), colour(r["strategy"])
            if math.isinf(after):
                ax.barh(i, cap, height=0.6, color=tint, hatch="xx", edgecolor="white", lw=0)
                ax.annotate(
                    "",
                    xy=(cap * 1.1, i),
                    xytext=(cap * 0.98, i),
                    arrowprops={"arrowstyle": "-|>", "color": tint, "lw": 3, "mutation_scale": 18},
                )
                ax.text(
                    cap / 2,
                    i,
                    f"stuck: \u2265 {cap:g} s (the cap)",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                    fontweight="bold",
                    bbox={"facecolor": tint, "edgecolor": "none", "pad": 2},
                )
            elif after < 0:
                ax.add_patch(
                    Rectangle(
                        (0, i - 0.3),
                        1,
                        0.6,
                        transform=ax.get_yaxis_transform(),
                        facecolor="0.93",
                        edgecolor="0.75",
                        hatch="//",
                        lw=0,
                    )
                )
                ax.text(
                    0.5,
                    i,
                    "n/a: did not wait, its waiters computed the value themselves",
                    transform=ax.get_yaxis_transform(),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="dimgrey",
                    bbox={"facecolor": "white", "edgecolor": "0.75", "pad": 2},
                )
            else:
                ax.barh(i, after, height=0.6, color=tint)
                _beside(ax, f"{after:.2f} s", (after, i))
        _rows(ax, names)
        ax.set_xlim(0, cap * 1.15)
        ax.axvline(cap, color="black", lw=0.8, ls=":")
        ax.set_xlabel(f"seconds (the scenario stops waiting at {cap:g} s)")
        ax.grid(alpha=0.3, axis="x")
        _title(ax, "crash: holder killed; seconds until the waiters have a value", LOWER)

    def extra(ax: Axes) -> None:
        stuck = [r["extra_computes"] == "?" for r in crash]
        values = [
            0.0 if s else float(r["extra_computes"]) for s, r in zip(stuck, crash, strict=True)
        ]
        labels = [
            "? (stuck: not counted)" if s else _fmt(v) for s, v in zip(stuck, values, strict=True)
        ]
        _dots(ax, names, values, labels, include=1.0)
        ax.axvline(1.0, color="black", lw=0.8, ls="--")
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
            _dots(ax, [r["strategy"] for r in plain], [float(r["p99_ms"]) for r in plain])
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
        quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        runs = min(int(r["runs"]) for r in wakeup)
        # How many runs decide each percentile, it and those above it (nearest
        # rank, as `_stats.percentile` takes it): with 50 runs the "p99" is
        # the slowest run, one outlier. A bar that one or two runs decide is
        # hatched and its name says so.
        tails = [runs - min(runs - 1, int(q * runs)) for _, q in quantiles]
        few = {
            1: "= max of {n} runs:\none run decides it",
            2: "= 2nd-slowest of {n}:\ntwo runs decide it",
        }
        ticks = [
            f"{name}\n" + few[tail].format(n=runs) if tail in few else name
            for (name, _), tail in zip(quantiles, tails, strict=True)
        ]
        width = 0.8 / len(wakeup)
        for i, r in enumerate(wakeup):
            xs = [j + (i - (len(wakeup) - 1) / 2) * width for j in range(len(quantiles))]
            values = [float(r[f"{name}_ms"]) for name, _ in quantiles]
            path = r["path"]
            tint = colour(path) if path in _ORDER else "grey"
            bars = ax.bar(xs, values, width, label=path, color=tint)
            for bar, v, tail in zip(bars, values, tails, strict=True):
                if tail in few:
                    bar.set_hatch("//")
                    bar.set_edgecolor("white")
                ax.annotate(
                    f"{v:.2f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xticks(range(len(quantiles)), ticks, fontsize=8)
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left")
        _title(
            ax,
            "wakeup: compute returned -> waiter in another process resumed\n"
            f"percentiles of {runs:,} runs per path",
            LOWER,
        )

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
    # The title's lines wrapped to the figure's width: one or two panels are
    # narrower than the machine's description, which was cut off there.
    # tight_layout leaves room for the title itself (a rect as well left it
    # twice).
    title = textwrap.wrap(
        f"asyncstampede benchmarks, run {run_id}"
        + (" (--quick)" if options.quick else "")
        + f": {options.processes} processes",
        width=70 * cols,
    ) + textwrap.wrap(
        f"{host['cpus']} CPUs, {host['platform']}, Python {host['python']}, Redis {host['server']}",
        width=70 * cols,
    )
    head = 0.15 + 0.18 * len(title)  # inches
    fig, axes = plt.subplots(
        nrows, cols, figsize=(6 * cols, 4.6 * nrows + head + 0.3), squeeze=False
    )
    flat = [ax for row in axes for ax in row]
    for draw, ax in zip(panels, flat, strict=False):
        draw(ax)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("\n".join(title), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
