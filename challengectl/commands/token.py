"""`challengectl token mint`: sign a player JWT with the local HS256 secret (docs/cli.md#commands, X13)."""

from __future__ import annotations

import json
from typing import Any

import typer

from challengectl.context import command_group, examples, get_cli, parse_duration
from challengectl.errors import EXIT_AUTH, EXIT_USAGE, CliError

app = command_group("Mint player tokens for local use.")

MINT_EXAMPLES = examples(
    "challengectl token mint --user alice",
    "TOKEN=$(challengectl token mint --user alice --ttl 10m) && curl -s -H \"Authorization: Bearer $TOKEN\" localhost:8000/challenge/v1/challenges | jq '.challenges | length'",
    "challengectl token mint --user bob --jwt-secret-file ./jwt.secret --claim role=tester --claim level=3",
)


@app.command("mint", epilog=MINT_EXAMPLES)
def mint(
    ctx: typer.Context,
    user: str | None = typer.Option(None, "--user", help="the player id (the token's sub) [env: CHALLENGE_USER]"),
    ttl: str = typer.Option("1h", "--ttl", help="lifetime <n>[ms|s|m|h|d]"),
    jwt_secret_file: str | None = typer.Option(
        None,
        "--jwt-secret-file",
        help="HS256 secret file; default jwt_secret, jwt_secret_file or <data_dir>/jwt.secret [env: CHALLENGE_JWT_SECRET_FILE]",
    ),
    claim: list[str] = typer.Option(
        [], "--claim", help="extra claim k=v (repeatable; JSON values such as 3 or true are typed)"
    ),
) -> None:
    """Sign an HS256 player JWT with the local secret; prints the bare token on stdout ({"token": ...} with -o json)."""
    from challengectl.client import local_jwt_secret
    from service.transport.auth import SECRET_FILE_NAME, is_valid_user_id, mint_token

    cli = get_cli(ctx)
    # An explicit --jwt-secret-file beats a jwt_secret from the environment or the config file.
    settings = cli.settings(user=user, jwt_secret_file=jwt_secret_file, jwt_secret="" if jwt_secret_file else None)
    player = settings.user
    if not player:
        raise CliError("token mint needs --user", "e.g. challengectl token mint --user alice", EXIT_USAGE)
    if not is_valid_user_id(player):
        raise CliError(
            "invalid user id: 1-100 characters, no control characters, no '{' or '}'", "pick another --user", EXIT_USAGE
        )
    ttl_s = int(parse_duration(ttl, "--ttl"))
    if ttl_s < 1:
        raise CliError(f"invalid --ttl '{ttl}': at least 1s", "e.g. --ttl 1h", EXIT_USAGE)
    key = local_jwt_secret(settings)
    if key is None:
        raise CliError(
            f"no JWT secret to sign with: jwt_secret and jwt_secret_file are unset and "
            f"{settings.resolved_data_dir() / SECRET_FILE_NAME} does not exist",
            "pass --jwt-secret-file, set CHALLENGE_JWT_SECRET_FILE, or run 'challengectl serve' "
            "once to create the embedded secret",
            EXIT_AUTH,
        )
    token = mint_token(key, player, ttl_s, parse_claims(claim))
    out = cli.output
    if out.explicit and out.format in ("json", "yaml"):
        out.emit_object({"token": token})
    else:
        out.write(token)  # bare, also when piped: TOKEN=$(challengectl token mint --user alice)


def parse_claims(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; a value that parses as JSON (number, boolean, list, object) keeps its type."""
    claims: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise CliError(f"invalid --claim '{pair}': expected k=v", "e.g. --claim role=tester", EXIT_USAGE)
        if name.strip() in ("sub", "iat", "exp"):
            raise CliError(f"--claim cannot set '{name.strip()}'", "use --user and --ttl", EXIT_USAGE)
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        claims[name.strip()] = value
    return claims


def register(root: typer.Typer) -> None:
    """Add the `token` group to the root app."""
    root.add_typer(app, name="token")
