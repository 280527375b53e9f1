"""The self-contained HTML report of a run, or of two runs compared (docs/loadtest.md#reports): the
verdict, thresholds and per-endpoint table, and every chart of `charts.report_charts` inlined as SVG.
One file, no scripts, no network access needed to open it. Also writes the charts as SVG files
beside a Markdown report, which links them."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from challengectl.loadtest.charts import report_charts
from challengectl.loadtest.markdown import fmt_ms
from challengectl.loadtest.svgchart import Chart, render_svg

STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pass { color: #1a7f37; } .fail { color: #cf222e; font-weight: bold; }
figure { margin: 18px 0; }
"""


def _page(title: str, body: Iterable[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mark(passed: bool | None) -> str:
    if passed is None:
        return "—"
    return '<span class="pass">✓ PASS</span>' if passed else '<span class="fail">✗ FAIL</span>'


def _figures(charts: list[Chart]) -> list[str]:
    if not charts:
        return ["<p>No per-second series in this report (written before schema 1.1).</p>"]
    return [f'<figure id="figure-{escape(chart.chart_id)}">{render_svg(chart)}</figure>' for chart in charts]


def _summary(report: dict[str, Any]) -> list[str]:
    run = report.get("run", {})
    phases = ", ".join(
        f"{escape(p['name'])} {p['duration_s']:g} s @ {p['target_rate']:g}/s"
        + (f" + {p['target_event_rate']:g} events/s" if p.get("target_event_rate") else "")
        for p in report.get("phases", [])
    )
    verdict = str(report.get("verdict", "?")).upper()
    lines = [
        f"<p><b>Run</b> {escape(str(run.get('id')))} ({escape(str(run.get('profile')))}), "
        f"{escape(str(run.get('started_at')))} UTC; <b>phases</b> {phases}</p>",
        f'<p><b>Verdict</b> <span class="{"pass" if verdict == "PASS" else "fail"}">{escape(verdict)}</span></p>',
    ]
    thresholds = report.get("thresholds", [])
    if thresholds:
        rows = [
            [
                escape(str(t.get("expr", t.get("label")))),
                "—" if t.get("observed") is None else escape(f"{t['observed']:g} {t.get('unit', '')}"),
                _mark(t.get("pass")),
            ]
            for t in thresholds
        ]
        lines.append(_table(["Threshold", "Observed", "Result"], rows))
    endpoints = report.get("overall", {}).get("endpoints", {})
    rows = [
        [
            escape(label),
            f"{entry['count']:,}",
            f"{entry['success_pct']:.2f} %",
            fmt_ms(entry["latency_ms"]["p50"]),
            fmt_ms(entry["latency_ms"]["p95"]),
            fmt_ms(entry["latency_ms"]["p99"]),
            fmt_ms(entry.get("target_p95_ms")) if entry.get("target_p95_ms") is not None else "—",
            _mark(entry.get("pass")),
        ]
        for label, entry in endpoints.items()
    ]
    lines += [
        "<h2>Endpoints (measured phases)</h2>",
        _table(["Endpoint", "Count", "Success", "p50", "p95", "p99", "p95 target", ""], rows),
    ]
    return lines


def render_html(report: dict[str, Any]) -> str:
    """The HTML report of one run."""
    label = report.get("run", {}).get("label") or report.get("run", {}).get("id") or "run"
    title = f"{report.get('run', {}).get('profile', 'load')} load test — {label}"
    notes = [
        f"<li>{escape(str(note))}</li>"
        for note in [*report.get("notes", []), *report.get("resources", {}).get("notes", [])]
    ]
    return _page(
        title,
        [
            f"<h1>{escape(title)}</h1>",
            *_summary(report),
            "<h2>Over time</h2>",
            *_figures(report_charts(report)),
            *(["<h2>Notes</h2>", "<ul>", *notes, "</ul>"] if notes else []),
        ],
    )


def render_compare_html(base: dict[str, Any], candidate: dict[str, Any], comparison: dict[str, Any]) -> str:
    """Two runs: the comparison rows of `loadtest compare` and every chart with both runs overlaid
    (the candidate solid, the base dashed)."""
    title = f"load test comparison — {comparison['candidate']['label']} vs {comparison['base']['label']}"
    rows = [
        [
            escape(row["endpoint"]),
            escape(row["metric"]),
            escape("—" if row["base"] is None else f"{row['base']:g} {row['unit']}"),
            escape("—" if row["candidate"] is None else f"{row['candidate']:g} {row['unit']}"),
            escape("—" if row["change"] is None else f"{row['change']:+.2f} {row['change_unit']}"),
            f'<span class="{"fail" if row["status"] == "regressed" else "pass"}">{escape(row["status"])}</span>',
        ]
        for row in comparison["rows"]
    ]
    return _page(
        title,
        [
            f"<h1>{escape(title)}</h1>",
            "<p>Charts: the candidate solid, the base dashed; the phases shaded are the candidate's.</p>",
            "<h2>Over time</h2>",
            *_figures(report_charts(candidate, base)),
            "<h2>Per endpoint and metric</h2>",
            _table(["Endpoint", "Metric", "Base", "Candidate", "Change", "Status"], rows),
        ],
    )


def write_chart_files(report: dict[str, Any], markdown_path: Path) -> list[tuple[str, str]]:
    """Every chart as `<report stem>-charts/<id>.svg` beside the Markdown report; (title, path relative
    to the report) of each, for the Markdown to link."""
    directory = markdown_path.parent / f"{markdown_path.stem}-charts"
    charts = report_charts(report)
    if charts:
        directory.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in charts:
        path = directory / f"{chart.chart_id}.svg"
        path.write_text(render_svg(chart) + "\n", encoding="utf-8")
        written.append((chart.title, f"{directory.name}/{path.name}"))
    return written
