"""Line charts as standalone SVG text, drawn here rather than with a charting library: a report stays
one file that opens without network access, and the install gains nothing (docs/loadtest.md#reports).

A chart has a title, labelled axes with ticks (linear, or logarithmic for latencies), shaded phase
bands, dashed target lines, a legend, and one `<path class="series" data-series=NAME>` per series
(a gap in the data is a gap in the line). Every text is XML-escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

PLOT_WIDTH, HEIGHT = 660, 320
LEFT, TOP, BOTTOM = 70, 34, 46
LEGEND_MIN_WIDTH, LEGEND_CHAR_WIDTH = 190, 6.5  # px; 11 px sans-serif averages under 6.5 px a character
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
BAND_FILLS = ("#eef3fb", "#f7f1e8", "#eef7ee", "#f5eef7")


@dataclass(frozen=True)
class Series:
    """One line: `values[i]` belongs to `xs[i]`; None leaves a gap. `dash` draws it dashed (e.g. the
    baseline run of a comparison), `dotted` thin and dotted (e.g. the schedule a measurement follows)."""

    name: str
    xs: Sequence[float]
    values: Sequence[float | None]
    color: str
    dash: bool = False
    dotted: bool = False


@dataclass(frozen=True)
class Band:
    """A shaded stretch of the x axis (a load-test phase) with its name."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class Target:
    """A dashed horizontal line at `value`, e.g. an endpoint's p95 target."""

    name: str
    value: float
    color: str


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    log_y: bool = False
    chart_id: str = "chart"


def _stroke(dash: bool, dotted: bool) -> str:
    if dotted:
        return ' stroke-width="1.2" stroke-dasharray="2 3"'
    return ' stroke-width="1.6"' + (' stroke-dasharray="6 4"' if dash else "")


def color_of(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_step(span: float, ticks: int = 5) -> float:
    """A 1, 2 or 5 × 10^n step giving about `ticks` intervals over `span`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


class _Scale:
    def __init__(self, low: float, high: float, pixels_low: float, pixels_high: float, log: bool) -> None:
        self.log = log
        self.low, self.high = (math.log10(low), math.log10(high)) if log else (low, high)
        self.pixels_low, self.pixels_high = pixels_low, pixels_high

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        fraction = (v - self.low) / (self.high - self.low) if self.high > self.low else 0.0
        return self.pixels_low + fraction * (self.pixels_high - self.pixels_low)


def _y_range(chart: Chart) -> tuple[float, float, list[float]]:
    values = [v for s in chart.series for v in s.values if v is not None] + [t.value for t in chart.targets]
    if chart.log_y:
        positive = [v for v in values if v > 0] or [1.0]
        low = 10 ** math.floor(math.log10(min(positive)))
        high = 10 ** math.ceil(math.log10(max(positive)))
        if high <= low:
            high = low * 10
        ticks, tick = [], low
        while tick <= high * 1.0001:
            ticks.append(tick)
            tick *= 10
        return low, high, ticks
    high = max(values, default=1.0) or 1.0
    step = nice_step(high)
    top = step * math.ceil(high / step)
    return 0.0, top, [step * i for i in range(int(round(top / step)) + 1)]


def render_svg(chart: Chart) -> str:
    """The chart as an `<svg>` element (no XML declaration, so it can be inlined in HTML as is)."""
    longest_name = max((len(s.name) for s in chart.series), default=0)
    width = round(LEFT + PLOT_WIDTH + max(LEGEND_MIN_WIDTH, 48 + LEGEND_CHAR_WIDTH * longest_name))
    plot_right, plot_bottom = LEFT + PLOT_WIDTH, HEIGHT - BOTTOM
    x_max = max((max(s.xs) for s in chart.series if s.xs), default=1.0)
    x_max = max([x_max, *(band.end for band in chart.bands)]) or 1.0
    x_step = nice_step(x_max, 8)
    x = _Scale(0.0, x_max, LEFT, plot_right, False)
    y_low, y_high, y_ticks = _y_range(chart)
    y = _Scale(y_low if not chart.log_y else y_low, y_high, plot_bottom, TOP, chart.log_y)

    def y_of(value: float) -> float:
        return y(max(value, y_low) if chart.log_y else value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id={quoteattr(chart.chart_id)} '
        f'width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(chart.title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    for index, band in enumerate(chart.bands):
        x0, x1 = x(band.start), x(min(band.end, x_max))
        parts.append(
            f'<rect class="phase" x="{x0:.1f}" y="{TOP}" width="{max(0.0, x1 - x0):.1f}" '
            f'height="{plot_bottom - TOP}" fill="{BAND_FILLS[index % len(BAND_FILLS)]}"/>'
            f'<text class="phase-label" x="{x0 + 4:.1f}" y="{TOP + 12}" fill="#555">{escape(band.name)}</text>'
        )
    for tick in y_ticks:
        py = y(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{plot_right}" y1="{py:.1f}" y2="{py:.1f}" stroke="#ddd"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{escape(_fmt(tick))}</text>'
        )
    tick = 0.0
    while tick <= x_max + 1e-9:
        px = x(tick)
        parts.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{plot_bottom}" y2="{plot_bottom + 4}" stroke="#333"/>'
            f'<text class="tick" x="{px:.1f}" y="{plot_bottom + 16}" text-anchor="middle">{escape(_fmt(tick))}</text>'
        )
        tick += x_step
    parts.append(
        f'<line x1="{LEFT}" x2="{plot_right}" y1="{plot_bottom}" y2="{plot_bottom}" stroke="#333"/>'
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{plot_bottom}" stroke="#333"/>'
        f'<text class="title" x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(chart.title)}</text>'
        f'<text class="axis-label x-label" x="{(LEFT + plot_right) / 2:.1f}" y="{HEIGHT - 8}" '
        f'text-anchor="middle">{escape(chart.x_label)}</text>'
        f'<text class="axis-label y-label" x="16" y="{(TOP + plot_bottom) / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(TOP + plot_bottom) / 2:.1f})">{escape(chart.y_label)}</text>'
    )
    for target in chart.targets:
        py = y_of(target.value)
        parts.append(
            f'<line class="target" data-target={quoteattr(target.name)} x1="{LEFT}" x2="{plot_right}" '
            f'y1="{py:.1f}" y2="{py:.1f}" stroke="{target.color}"{_stroke(False, True)}/>'
        )
    for series in chart.series:
        commands, pen_down = [], False
        for xv, value in zip(series.xs, series.values, strict=False):
            if value is None or (chart.log_y and value <= 0):
                pen_down = False
                continue
            commands.append(f"{'L' if pen_down else 'M'}{x(xv):.1f},{y_of(value):.1f}")
            pen_down = True
        parts.append(
            f'<path class="series" data-series={quoteattr(series.name)} d="{" ".join(commands)}" fill="none" '
            f'stroke="{series.color}" stroke-linejoin="round"{_stroke(series.dash, series.dotted)}/>'
        )
    legend = [(s.name, s.color, _stroke(s.dash, s.dotted)) for s in chart.series]
    if chart.targets:  # one entry: each target line has its series' colour
        legend.append(("targets (dotted)", "#333", _stroke(False, True)))
    for index, (name, color, stroke) in enumerate(legend):
        ly = TOP + 8 + index * 15
        parts.append(
            f'<line x1="{plot_right + 12}" x2="{plot_right + 34}" y1="{ly}" y2="{ly}" stroke="{color}"{stroke}/>'
            f'<text class="legend" x="{plot_right + 40}" y="{ly + 4}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
