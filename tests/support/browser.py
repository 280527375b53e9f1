"""Headless Chromium for the report checks: load an HTML file, let Chromium lay it out, and read back
what it drew for every chart (each series' drawn length and box, the axis labels' text and size), as
a person would see it. Tests skip with a reason when Chromium is not installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "Chromium is not installed (Debian package chromium; .ci/run installs it where apt-get works)"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Runs inside the page: what the layout engine made of every <svg class="chart">.
MEASURE = """
<script>
const charts = [...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {
    id: svg.id,
    width: box.width, height: box.height,
    title: svg.querySelector('.title')?.textContent,
    axes: [...svg.querySelectorAll('.axis-label')].map(t => ({text: t.textContent, width: t.getBBox().width})),
    ticks: svg.querySelectorAll('.tick').length,
    phases: [...svg.querySelectorAll('.phase-label')].map(t => t.textContent),
    targets: svg.querySelectorAll('.target').length,
    series: [...svg.querySelectorAll('path.series')].map(p => ({
      name: p.dataset.series, length: p.getTotalLength(), width: p.getBBox().width,
      stroke: getComputedStyle(p).stroke,
    })),
  };
});
const out = document.createElement('pre');
out.id = 'chart-check';
out.textContent = JSON.stringify(charts);
document.body.appendChild(out);
</script>
"""


def measure_charts(html_path: Path) -> list[dict[str, Any]]:
    """Every chart of the page as Chromium laid it out (the page is copied with a measuring script)."""
    assert CHROMIUM is not None, SKIP_REASON
    with tempfile.TemporaryDirectory(prefix="challengectl-chromium-") as work:
        page = Path(work) / "page.html"
        page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), "utf-8")
        done = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={work}/profile", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    match = re.search(r'<pre id="chart-check">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"Chromium drew no chart check (exit {done.returncode}): {done.stderr[-500:]}"
    return json.loads(match.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def drawn_points(values: list[float | None]) -> int:
    """How many segments a series with these values draws (pairs of neighbouring non-null points)."""
    return sum(1 for a, b in zip(values, values[1:], strict=False) if a is not None and b is not None)
