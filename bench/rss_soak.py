"""Issue 10 row "RSS after a 10-minute seed-m3 run at scale 1.0: <= 200 MB per process, flat over the last
5 minutes".

Starts a default `challengectl serve` on the seed-m3 catalog (embedded PostgreSQL/Redis in a temporary
directory), runs `challengectl loadtest run --profile seed-m3 --scale 1.0` (the profile's init phase, then
MINUTES of gameplay) and samples the RSS of the serve process and every descendant (psutil) every INTERVAL
seconds. Prints, per process, RSS at the start, at the end and at most, and over the last 5 minutes the
least-squares slope of every sample and of the floor (each minute's lowest sample), with the verdict:
<= 200 MB at most, and flat (the floor's fitted growth over those 5 minutes within 2 MB or 2 % of the final
RSS). The floor is judged because the ingestion process's RSS rises and falls by 10-30 MB within seconds
with its gRPC calls in flight (about 14 KB each; hundreds during an event-ack backlog): the line through
every sample then follows where those bursts fall, while a leak lifts the floor. The service's own
processes (Python) are judged; embedded servers, when they are children, are listed for information.

    python bench/rss_soak.py [--minutes 10] [--init 60s] [--scale 1.0] [--interval 5]
        [--service-env NAME=VALUE ...]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil
import target_rows as rows

LIMIT_MB = 200.0
WINDOW_S = 300.0


def sample(service: rows.Service, interval_s: float, stop: threading.Event) -> dict[tuple[int, str], list]:
    """RSS samples (seconds since start, MB) per (pid, name), until `stop` is set."""
    series: dict[tuple[int, str], list] = {}
    started = time.monotonic()
    while True:
        now = time.monotonic() - started
        for process in service.processes():
            try:
                key = (process.pid, role_of(process))
                series.setdefault(key, []).append((now, process.memory_info().rss / 2**20))
            except psutil.Error:
                continue
        if stop.wait(interval_s):
            return series


def role_of(process: psutil.Process) -> str:
    name = process.name()
    if "python" not in name.lower():
        return name
    command = " ".join(process.cmdline())
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    return "serve (ingestion, admin)" if "challengectl" in command and "serve" in command else "player API worker"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the gameplay phase")
    parser.add_argument("--init", default="60s", help="length of the initialize phase before it")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="extra service environment"
    )
    args = parser.parse_args()
    stamp = rows.Stamp()
    service_env = dict(setting.split("=", 1) for setting in args.service_env)
    with rows.serve_profile("seed-m3", env=service_env) as service:
        stop = threading.Event()
        series: dict = {}
        sampler = threading.Thread(target=lambda: series.update(sample(service, args.interval, stop)))
        sampler.start()
        try:
            report = service.seed_m3(args.init, f"{args.minutes * 60:g}s", args.scale)
        finally:
            stop.set()
            sampler.join()
    verdicts = []
    table_rows = []
    for (pid, role), samples in sorted(series.items(), key=lambda item: item[0][1]):
        if len(samples) < 2:
            continue
        trend = rows.rss_trend(samples, WINDOW_S)
        judged = role.startswith(("serve", "player API", "multiprocessing"))
        verdict = "-"
        if judged:
            ok = trend.max_mb <= LIMIT_MB and trend.flat()
            verdicts.append(ok)
            size = "<= 200 MB" if trend.max_mb <= LIMIT_MB else "**over 200 MB**"
            verdict = f"{size}, {'flat' if trend.flat() else '**growing**'}"
        table_rows.append(
            (
                role,
                pid,
                f"{trend.start_mb:.1f}",
                f"{trend.end_mb:.1f}",
                f"{trend.max_mb:.1f}",
                f"{trend.slope_mb_per_min:+.2f} ({trend.growth_mb:+.1f} MB over {trend.window_s / 60:.1f} min)",
                f"{trend.floor_slope_mb_per_min:+.2f} ({trend.floor_growth_mb:+.1f} MB)",
                verdict,
            )
        )
    print(
        stamp.header(
            f"seed-m3 scale {args.scale:g}, init {args.init} + gameplay {args.minutes:g} min, default serve; "
            f"RSS every {args.interval:g} s"
            + (f"; service environment {' '.join(args.service_env)}" if args.service_env else "")
        )
    )
    print(f"load test: verdict {report['verdict']}; {rows.failures_line(report)}")
    print()
    print(
        rows.table(
            (
                "process",
                "pid",
                "start MB",
                "end MB",
                "max MB",
                "slope MB/min, last 5 min",
                "floor slope MB/min",
                "verdict",
            ),
            table_rows,
        )
    )
    print()
    met = bool(verdicts) and all(verdicts)
    print(
        f"Row verdict: {'MET' if met else 'NOT MET'} (<= {LIMIT_MB:.0f} MB per service process, its floor flat over the last 5 min)"
    )


if __name__ == "__main__":
    main()
