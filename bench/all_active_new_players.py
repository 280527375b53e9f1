"""Issue 10 row "all-active-500: new players (500 default goals each) at 300 RPS: p95 <= 50 ms, 0 failed".

Starts a default `challengectl serve` on the all-active-500 catalog (embedded PostgreSQL/Redis in a
temporary directory) and runs the profile's initialize phase from empty tables at RATE requests/s for
SECONDS (`challengectl loadtest run --reset --phase init=...`, no gameplay): with the default 10,000 users
and 30 s at 300/s, every request is a new player's first initialize (500 goals assigned).

    python bench/all_active_new_players.py [--rate 300] [--seconds 30]

Prints Markdown tables and the verdict.
"""

from __future__ import annotations

import target_rows as rows


def main() -> None:
    parser = rows.row_parser(__doc__, rate=300.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the phase (rate x seconds <= 10,000)")
    args = parser.parse_args()
    rows.all_active_row(
        row=f"all-active-500 new players at {args.rate:g} RPS",
        what=f"new players' initialize at {args.rate:g} RPS for {args.seconds:g} s",
        setup_players=0,
        concurrency=0,
        loadtest_args=("--reset", "--yes", "--phase", f"init={args.seconds:g}s@{args.rate:g}", "--duration", "0s"),
        targets=("initialize_new:p95<=50ms", rows.NO_FAILURES),
    )


if __name__ == "__main__":
    main()
