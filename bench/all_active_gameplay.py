"""Issue 10 row "all-active-500: 300 RPS GET /v1/challenges + 500 events/s over OnMessage, 2 min: every
seed target, 0 failed".

Starts a default `challengectl serve` on the all-active-500 catalog (embedded PostgreSQL/Redis in a
temporary directory), initializes PLAYERS players through the API first (`challengectl users init`;
prints how long it took and how many rows it wrote), then runs the profile's gameplay phase for MINUTES
(`challengectl loadtest run --phase init=0s --duration ...`): 300 API requests/s of the profile's mix
(70 % `GET /v1/challenges`, half of them `active_only`; 10 % returning initialize, 15 % set-active, 5 %
claim) and 500 events/s, one AGS `OnMessage` call each. Judged against every seed target of the endpoints
the mix drives (the load test's default gates less new-player initialize) and 0 failed.

    python bench/all_active_gameplay.py [--players 10000] [--minutes 2] [--rate 300] [--event-rate 500]

Prints Markdown tables and the verdict.
"""

from __future__ import annotations

import target_rows as rows

# Every seed target of an endpoint the gameplay mix drives (its players are initialized, so no new-player
# initialize), with "0 failed" in place of the seed's 99.95 % success.
GAMEPLAY_TARGETS = tuple(t for t in rows.SEED_TARGETS if not t.startswith(("initialize_new:", "*:success")))


def main() -> None:
    parser = rows.row_parser(__doc__, rate=300.0, setup_players=10_000)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the gameplay phase")
    parser.add_argument("--event-rate", type=float, default=500.0, help="events per second (OnMessage)")
    args = parser.parse_args()
    rows.all_active_row(
        row="all-active-500 gameplay",
        what=(
            f"{args.players} players initialized first, then {args.rate:g} API req/s + {args.event_rate:g} "
            f"OnMessage events/s for {args.minutes:g} min"
        ),
        setup_players=args.players,
        concurrency=args.concurrency,
        loadtest_args=("--users", str(args.players), "--phase", "init=0s", "--phase",
                       f"gameplay={args.minutes * 60:g}s@{args.rate:g}/{args.event_rate:g}", "--event-rpc", "ags"),
        targets=(*GAMEPLAY_TARGETS, rows.NO_FAILURES),
    )  # fmt: skip


if __name__ == "__main__":
    main()
