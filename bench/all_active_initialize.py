"""Issue 10 row "all-active-500 (10 x 50, all default, 10,000 players initialized first): initialize at
300 RPS, p95 <= 20 ms, 0 failed" (the reference's Go service, its Phase 15: p95 16.8 ms on 2 dedicated cores).

Starts a default `challengectl serve` on the all-active-500 catalog (embedded PostgreSQL/Redis in a
temporary directory), initializes PLAYERS players through the API first (`challengectl users init`,
CONCURRENCY calls in flight; prints how long it took and how many rows it wrote), then runs the profile's
initialize phase at RATE requests/s for SECONDS (`challengectl loadtest run --phase init=...`, no gameplay):
every request is a returning player's initialize with 500 active goals.

    python bench/all_active_initialize.py [--players 10000] [--rate 300] [--seconds 60] [--concurrency 6]

Prints Markdown tables and the verdict.
"""

from __future__ import annotations

import target_rows as rows


def main() -> None:
    parser = rows.row_parser(__doc__, rate=300.0, setup_players=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured phase")
    args = parser.parse_args()
    rows.all_active_row(
        row=f"all-active-500 initialize at {args.rate:g} RPS",
        what=f"{args.players} players initialized first, then initialize at {args.rate:g} RPS for {args.seconds:g} s",
        setup_players=args.players,
        concurrency=args.concurrency,
        loadtest_args=("--users", str(args.players), "--phase", f"init={args.seconds:g}s@{args.rate:g}",
                       "--duration", "0s"),
        targets=("*:p95<=20ms", rows.NO_FAILURES),
    )  # fmt: skip


if __name__ == "__main__":
    main()
