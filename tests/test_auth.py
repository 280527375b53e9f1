"""Player authentication (docs/http-api.md#authentication, docs/rules.md A1–A3, X15's jwt.secret): exact 401/403 bodies, HS256 and a
JWKS of RS256/ES256 keys served by a real local HTTP server, key rotation, the mock header, the
embedded secret file and token minting."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.datastructures import Headers

from service.config.settings import SettingsError, load_settings
from service.domain.user_ids import is_valid_user_id
from service.transport.auth import (
    AuthConfig,
    Authenticator,
    InsecureSecretFile,
    auth_config_from_settings,
    ensure_embedded_secret,
    mint_token,
    read_secret_file,
)
from service.transport.errors import ApiError

SECRET = b"0123456789abcdef0123456789abcdef-test-secret"
MALFORMED = "missing or malformed Authorization header"


class FakeClock:
    """A settable clock; starts at the real time so PyJWT's own time checks agree with it."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def hs_token(claims: dict[str, Any], key: bytes = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims_for(user_id: str = "player-1", ttl_s: int = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user_id, "iat": now, "exp": now + ttl_s, **extra}


async def rejection(authenticator: Authenticator, headers: Any) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as caught:
        await authenticator.authenticate(headers)
    return caught.value.status, caught.value.error_code, caught.value.message


def hs_authenticator(**config: Any) -> Authenticator:
    return Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET, **config))


# --- A1: HS256 verification and the exact error table -----------------------------------------------


async def test_missing_header_is_malformed():
    assert await rejection(hs_authenticator(), {}) == (401, "UNAUTHORIZED", MALFORMED)


@pytest.mark.parametrize("value", ["", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "Bearer a b"])
async def test_non_bearer_headers_are_malformed(value):
    assert await rejection(hs_authenticator(), {"authorization": value}) == (401, "UNAUTHORIZED", MALFORMED)


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.!!!.sig", "a.b"])
async def test_undecodable_token_is_malformed(token):
    assert await rejection(hs_authenticator(), bearer(token)) == (401, "UNAUTHORIZED", MALFORMED)


async def test_valid_hs256_token_gives_sub_with_case_insensitive_starlette_headers():
    token = hs_token(claims_for("player-7"))
    headers = Headers(raw=[(b"authorization", f"Bearer {token}".encode())])
    assert await hs_authenticator().authenticate(headers) == "player-7"
    assert await hs_authenticator().authenticate({"authorization": f"bearer {token}"}) == "player-7"


async def test_bad_signature():
    token = hs_token(claims_for(), key=b"another-secret-that-is-long-enough-32b")
    assert await rejection(hs_authenticator(), bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: signature verification failed",
    )


async def test_expired_beyond_leeway_is_rejected_and_within_leeway_accepted():
    now = int(time.time())
    expired = hs_token({"sub": "u1", "exp": now - 31})
    within_leeway = hs_token({"sub": "u1", "exp": now - 10})
    authenticator = hs_authenticator(leeway_s=30)
    assert await rejection(authenticator, bearer(expired)) == (401, "UNAUTHORIZED", "invalid token: token expired")
    assert await authenticator.authenticate(bearer(within_leeway)) == "u1"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_not_yet_valid_token(claim):
    token = hs_token(claims_for(**{claim: int(time.time()) + 120}))
    assert await rejection(hs_authenticator(), bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: token not yet valid",
    )


async def test_nbf_within_leeway_is_accepted():
    token = hs_token(claims_for(nbf=int(time.time()) + 10))
    assert await hs_authenticator(leeway_s=30).authenticate(bearer(token)) == "player-1"


async def test_missing_exp():
    token = hs_token({"sub": "u1", "iat": int(time.time())})
    assert await rejection(hs_authenticator(), bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: missing exp claim",
    )


async def test_non_numeric_exp():
    token = hs_token({"sub": "u1", "exp": "tomorrow"})
    assert await rejection(hs_authenticator(), bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: malformed time claim",
    )


def _signed_raw_payload(payload: bytes) -> str:
    """An HS256 token over a hand-written payload (numbers PyJWT's own encoder would not write)."""
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = header + b"." + jwt.utils.base64url_encode(payload)
    signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(signing_input, SECRET)
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


@pytest.mark.parametrize("exp", [b"1e400", b"-1e400", b"1" + b"0" * 400, b"NaN", b"Infinity"])
async def test_unrepresentable_exp_is_401(exp):
    """Issue 11 item 3: a correctly signed token whose exp is no instant (an integer beyond any float
    once raised OverflowError, a 500)."""
    token = _signed_raw_payload(b'{"sub":"u1","exp":' + exp + b"}")
    assert await rejection(hs_authenticator(), bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: malformed time claim",
    )


@pytest.mark.parametrize("sub", [None, "", "x" * 101, "a{b", "a}b", "bell\x07", "line\nbreak", "c1\x85", 42])
async def test_missing_or_invalid_sub(sub):
    claims = claims_for()
    if sub is None:
        del claims["sub"]
    else:
        claims["sub"] = sub
    assert await rejection(hs_authenticator(), bearer(hs_token(claims))) == (401, "UNAUTHORIZED", "invalid user id")


async def test_sub_of_100_characters_is_accepted():
    assert await hs_authenticator().authenticate(bearer(hs_token(claims_for("é" * 100)))) == "é" * 100


async def test_iss_and_aud_are_ignored_when_not_configured():
    token = hs_token(claims_for(iss="someone-else", aud="another-service"))
    assert await hs_authenticator().authenticate(bearer(token)) == "player-1"


@pytest.mark.parametrize("extra", [{"iss": "other-issuer"}, {}, {"iss": "https://iam.example/"}])
async def test_issuer_mismatch_is_forbidden_when_configured(extra):
    token = hs_token(claims_for(**extra))
    assert await rejection(hs_authenticator(issuer="https://iam.example"), bearer(token)) == (
        403,
        "FORBIDDEN",
        "token not accepted by this service",
    )


@pytest.mark.parametrize("extra", [{"aud": "other-service"}, {}, {"aud": ["x", "y"]}])
async def test_audience_mismatch_is_forbidden_when_configured(extra):
    token = hs_token(claims_for(**extra))
    assert await rejection(hs_authenticator(audience="challenge"), bearer(token)) == (
        403,
        "FORBIDDEN",
        "token not accepted by this service",
    )


async def test_matching_issuer_and_audience_are_accepted():
    token = hs_token(claims_for(iss="https://iam.example", aud=["other", "challenge"]))
    authenticator = hs_authenticator(issuer="https://iam.example", audience="challenge")
    assert await authenticator.authenticate(bearer(token)) == "player-1"


async def test_expired_token_with_wrong_issuer_is_401_not_403():
    token = hs_token({"sub": "u1", "exp": int(time.time()) - 3600, "iss": "other"})
    status, _, message = await rejection(hs_authenticator(issuer="https://iam.example"), bearer(token))
    assert (status, message) == (401, "invalid token: token expired")


async def test_namespace_claim_is_ignored():
    token = hs_token(claims_for(namespace="some-other-namespace"))
    assert await hs_authenticator().authenticate(bearer(token)) == "player-1"


@pytest.mark.parametrize("algorithm", ["HS512", "none"])
async def test_algorithm_outside_the_configuration_is_rejected(algorithm):
    key = SECRET + SECRET if algorithm == "HS512" else None  # 64+ bytes: no short-key warning for HS512
    token = jwt.encode(claims_for(), key, algorithm=algorithm)
    assert await rejection(hs_authenticator(), bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: algorithm not allowed",
    )


async def test_cached_token_still_expires():
    clock = FakeClock(time.time())
    authenticator = Authenticator(AuthConfig(hs256_key=SECRET, leeway_s=30), clock=clock)
    expires_at = int(clock.now) + 60
    token = hs_token({"sub": "u1", "exp": expires_at})
    assert await authenticator.authenticate(bearer(token)) == "u1"
    clock.now = expires_at + 29
    assert await authenticator.authenticate(bearer(token)) == "u1"
    clock.now = expires_at + 31
    assert await rejection(authenticator, bearer(token)) == (401, "UNAUTHORIZED", "invalid token: token expired")


async def test_token_cache_is_bounded():
    authenticator = Authenticator(AuthConfig(hs256_key=SECRET), cache_size=3)
    tokens = [hs_token(claims_for(f"user-{i}")) for i in range(5)]
    for index, token in enumerate(tokens):
        assert await authenticator.authenticate(bearer(token)) == f"user-{index}"
    assert authenticator.cached_tokens == 3
    assert await authenticator.authenticate(bearer(tokens[0])) == "user-0"


@pytest.mark.parametrize(
    "value,valid",
    [
        ("a", True),
        ("x" * 100, True),
        ("user-000001", True),
        ("ünïcode ok", True),
        ("", False),
        ("x" * 101, False),
        ("{u}", False),
        ("tab\t", False),
        ("\x00", False),
        ("del\x7f", False),
        ("c1\x9f", False),
        ("\xa0nbsp", True),
    ],
)
def test_user_id_rule(value, valid):
    assert is_valid_user_id(value) is valid


# --- A2: JWKS with RS256 and ES256 ------------------------------------------------------------------


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any
    jwk: dict[str, Any]

    def sign(self, claims: dict[str, Any], with_kid: bool = True) -> str:
        headers = {"kid": self.kid} if with_kid else {}
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers=headers)


def rsa_key(kid: str) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "alg": "RS256", "use": "sig"}
    return SigningKey(kid, "RS256", private, jwk)


def ec_key(kid: str) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "alg": "ES256", "use": "sig"}
    return SigningKey(kid, "ES256", private, jwk)


@pytest.fixture(scope="module")
def rsa_keys() -> list[SigningKey]:
    return [rsa_key("rsa-1"), rsa_key("rsa-2")]


@pytest.fixture(scope="module")
def ec_keys() -> list[SigningKey]:
    return [ec_key("ec-1"), ec_key("ec-2")]


@dataclass
class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS the test can change, counting the fetches."""

    url: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    status: int = 200
    fetches: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.json_response({"error": "unavailable"}, status=self.status)
        return web.json_response({"keys": [key.jwk for key in self.keys]})


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}/.well-known/jwks.json"
    yield server
    await runner.cleanup()


@pytest.fixture
def clocks() -> tuple[FakeClock, FakeClock]:
    return FakeClock(time.time()), FakeClock(1000.0)


@pytest.fixture
async def jwks_authenticator(jwks_server, clocks) -> AsyncIterator[Authenticator]:
    wall, monotonic = clocks
    authenticator = Authenticator(
        AuthConfig(jwks_url=jwks_server.url, jwks_refresh_s=600), clock=wall, monotonic=monotonic
    )
    yield authenticator
    await authenticator.close()


async def test_jwks_rs256_and_es256_tokens_are_accepted(jwks_server, jwks_authenticator, rsa_keys, ec_keys):
    jwks_server.keys = [rsa_keys[0], ec_keys[0]]
    assert jwks_authenticator.config.algorithms == ("RS256", "ES256")
    assert await jwks_authenticator.authenticate(bearer(rsa_keys[0].sign(claims_for("rsa-user")))) == "rsa-user"
    assert await jwks_authenticator.authenticate(bearer(ec_keys[0].sign(claims_for("ec-user")))) == "ec-user"
    assert jwks_server.fetches == 1


async def test_jwks_token_signed_by_another_key_with_a_known_kid_is_rejected(jwks_server, jwks_authenticator, rsa_keys):
    jwks_server.keys = [rsa_keys[0]]
    forged = jwt.encode(claims_for(), rsa_keys[1].private_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await rejection(jwks_authenticator, bearer(forged)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: signature verification failed",
    )


async def test_token_algorithm_must_match_the_key(jwks_server, jwks_authenticator, rsa_keys, ec_keys):
    jwks_server.keys = [rsa_keys[0]]
    # An ES256 token that names the RSA key's kid.
    token = jwt.encode(claims_for(), ec_keys[0].private_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert await rejection(jwks_authenticator, bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: algorithm does not match the signing key",
    )


async def test_token_without_kid_uses_the_only_key_of_its_algorithm(jwks_server, rsa_keys, ec_keys):
    jwks_server.keys = [rsa_keys[0], ec_keys[0]]
    single = Authenticator(AuthConfig(jwks_url=jwks_server.url))
    ambiguous = Authenticator(AuthConfig(jwks_url=jwks_server.url))
    token = rsa_keys[0].sign(claims_for(), with_kid=False)
    try:
        await single.start()
        jwks_server.keys = rsa_keys
        await ambiguous.start()
        assert await single.authenticate(bearer(token)) == "player-1"
        assert await rejection(ambiguous, bearer(token)) == (401, "UNAUTHORIZED", "invalid token: unknown signing key")
    finally:
        await single.close()
        await ambiguous.close()


async def test_unknown_kid_refreshes_at_most_once_per_10_seconds(
    jwks_server, jwks_authenticator, clocks, rsa_keys, ec_keys
):
    _, monotonic = clocks
    jwks_server.keys = [rsa_keys[0]]
    assert await jwks_authenticator.authenticate(bearer(rsa_keys[0].sign(claims_for("old")))) == "old"
    assert jwks_server.fetches == 1

    # Key rotation: the server now publishes a new key. Within 10 s of the last fetch, no refetch.
    jwks_server.keys = [rsa_keys[0], ec_keys[1]]
    rotated = ec_keys[1].sign(claims_for("new"))
    monotonic.now += 5
    assert await rejection(jwks_authenticator, bearer(rotated)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: unknown signing key",
    )
    assert jwks_server.fetches == 1

    monotonic.now += 5
    assert await jwks_authenticator.authenticate(bearer(rotated)) == "new"
    assert jwks_server.fetches == 2

    unknown = rsa_keys[1].sign(claims_for("nobody"))
    monotonic.now += 1
    assert await rejection(jwks_authenticator, bearer(unknown)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: unknown signing key",
    )
    monotonic.now += 1
    assert await rejection(jwks_authenticator, bearer(unknown)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: unknown signing key",
    )
    assert jwks_server.fetches == 2
    monotonic.now += 10
    assert await rejection(jwks_authenticator, bearer(unknown)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: unknown signing key",
    )
    assert jwks_server.fetches == 3


async def test_withdrawn_key_stops_cached_tokens(jwks_server, jwks_authenticator, clocks, rsa_keys):
    _, monotonic = clocks
    jwks_server.keys = [rsa_keys[0]]
    old_token = rsa_keys[0].sign(claims_for("old"))
    assert await jwks_authenticator.authenticate(bearer(old_token)) == "old"

    jwks_server.keys = [rsa_keys[1]]
    monotonic.now += 11
    assert await jwks_authenticator.authenticate(bearer(rsa_keys[1].sign(claims_for("new")))) == "new"
    assert await rejection(jwks_authenticator, bearer(old_token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: unknown signing key",
    )


async def test_jwks_is_refreshed_periodically_in_the_background(jwks_server, jwks_authenticator, clocks, rsa_keys):
    _, monotonic = clocks
    jwks_server.keys = [rsa_keys[0]]
    await jwks_authenticator.authenticate(bearer(rsa_keys[0].sign(claims_for("a"))))
    monotonic.now += 599
    await jwks_authenticator.authenticate(bearer(rsa_keys[0].sign(claims_for("b"))))
    assert jwks_server.fetches == 1

    monotonic.now += 1
    # The request that notices the stale set is answered with the current keys; the refresh runs beside it.
    assert await jwks_authenticator.authenticate(bearer(rsa_keys[0].sign(claims_for("c")))) == "c"
    for _ in range(500):
        if jwks_server.fetches == 2:
            break
        await asyncio.sleep(0.01)
    assert jwks_server.fetches == 2


async def test_concurrent_first_requests_share_one_fetch(jwks_server, jwks_authenticator, rsa_keys):
    jwks_server.keys = [rsa_keys[0]]
    tokens = [rsa_keys[0].sign(claims_for(f"user-{i}")) for i in range(5)]
    users = await asyncio.gather(*(jwks_authenticator.authenticate(bearer(token)) for token in tokens))
    assert users == [f"user-{i}" for i in range(5)]
    assert jwks_server.fetches == 1


async def test_jwks_error_response_with_no_keys_is_401_and_retried_after_10_seconds(
    jwks_server, jwks_authenticator, clocks, rsa_keys, caplog
):
    _, monotonic = clocks
    caplog.set_level(logging.WARNING, logger="challengectl.auth")
    jwks_server.keys = [rsa_keys[0]]
    jwks_server.status = 503
    token = rsa_keys[0].sign(claims_for())
    assert await rejection(jwks_authenticator, bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: signing keys unavailable",
    )
    assert "HTTP 503" in caplog.text and jwks_server.url in caplog.text
    assert await rejection(jwks_authenticator, bearer(token)) == (
        401,
        "UNAUTHORIZED",
        "invalid token: signing keys unavailable",
    )
    assert jwks_server.fetches == 1

    jwks_server.status = 200
    monotonic.now += 10
    assert await jwks_authenticator.authenticate(bearer(token)) == "player-1"
    assert jwks_server.fetches == 2


async def test_failed_refresh_keeps_the_previous_keys(jwks_server, jwks_authenticator, clocks, rsa_keys, ec_keys):
    _, monotonic = clocks
    jwks_server.keys = [rsa_keys[0]]
    await jwks_authenticator.start()
    jwks_server.status = 500
    monotonic.now += 11
    assert await rejection(jwks_authenticator, bearer(ec_keys[0].sign(claims_for()))) == (
        401,
        "UNAUTHORIZED",
        "invalid token: unknown signing key",
    )
    assert jwks_server.fetches == 2
    assert await jwks_authenticator.authenticate(bearer(rsa_keys[0].sign(claims_for("kept")))) == "kept"


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_jwks_server_down_with_no_keys_is_401(rsa_keys, caplog):
    caplog.set_level(logging.WARNING, logger="challengectl.auth")
    url = f"http://127.0.0.1:{unused_port()}/jwks.json"
    authenticator = Authenticator(AuthConfig(jwks_url=url))
    try:
        assert await rejection(authenticator, bearer(rsa_keys[0].sign(claims_for()))) == (
            401,
            "UNAUTHORIZED",
            "invalid token: signing keys unavailable",
        )
    finally:
        await authenticator.close()
    assert f"JWKS fetch from {url} failed" in caplog.text


async def test_hs256_and_jwks_together(jwks_server, rsa_keys):
    jwks_server.keys = [rsa_keys[0]]
    authenticator = Authenticator(AuthConfig(hs256_key=SECRET, jwks_url=jwks_server.url))
    try:
        assert authenticator.config.algorithms == ("HS256", "RS256", "ES256")
        assert await authenticator.authenticate(bearer(hs_token(claims_for("hs")))) == "hs"
        assert await authenticator.authenticate(bearer(rsa_keys[0].sign(claims_for("rs")))) == "rs"
    finally:
        await authenticator.close()


# --- A3: auth = none --------------------------------------------------------------------------------


async def test_mock_mode_requires_the_header():
    authenticator = Authenticator(AuthConfig(mode="none"))
    missing = (401, "UNAUTHORIZED", "missing X-Mock-User-Id header")
    assert await rejection(authenticator, {}) == missing
    assert await rejection(authenticator, {"x-mock-user-id": ""}) == missing
    assert await rejection(authenticator, bearer(hs_token(claims_for()))) == missing
    assert await authenticator.authenticate(Headers(raw=[(b"x-mock-user-id", b"mock-user")])) == "mock-user"


@pytest.mark.parametrize("value", ["x" * 101, "a{b", "tab\there", "\x7f"])
async def test_mock_mode_invalid_header_value(value):
    assert await rejection(Authenticator(AuthConfig(mode="none")), {"x-mock-user-id": value}) == (
        401,
        "UNAUTHORIZED",
        "invalid user id",
    )


# --- configuration from settings -------------------------------------------------------------------


def settings_with(tmp_path: Path, **flags: Any):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "no-config"), **flags.pop("env", {})}
    return load_settings(flags, env)


def test_config_from_jwt_secret(tmp_path):
    settings = settings_with(
        tmp_path,
        env={
            "CHALLENGE_JWT_SECRET": "sëcret",
            "CHALLENGE_JWT_ISSUER": "iss",
            "CHALLENGE_JWT_AUDIENCE": "aud",
            "CHALLENGE_JWT_LEEWAY_S": "5",
            "REFRESH_INTERVAL": "60",
        },
    )
    config = auth_config_from_settings(settings, None)
    assert config == AuthConfig(
        mode="jwt",
        hs256_key="sëcret".encode(),
        algorithms=("HS256",),
        issuer="iss",
        audience="aud",
        leeway_s=5,
        jwks_refresh_s=60,
    )


def test_config_from_secret_file_strips_whitespace(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("  \n the-key \n\n")
    config = auth_config_from_settings(settings_with(tmp_path, jwt_secret_file=str(secret_file)), None)
    assert config.hs256_key == b"the-key"


def test_config_uses_the_embedded_secret_when_nothing_is_configured(tmp_path):
    path = ensure_embedded_secret(tmp_path)
    config = auth_config_from_settings(settings_with(tmp_path), path)
    assert config.hs256_key == path.read_text().strip().encode()


def test_config_jwks_defaults_and_algorithm_list(tmp_path):
    settings = settings_with(tmp_path, jwt_jwks_url="http://127.0.0.1:1/jwks")
    assert auth_config_from_settings(settings, None).algorithms == ("RS256", "ES256")
    settings = settings_with(
        tmp_path, jwt_jwks_url="http://127.0.0.1:1/jwks", env={"CHALLENGE_JWT_ALGORITHMS": " ES256 , "}
    )
    assert auth_config_from_settings(settings, None).algorithms == ("ES256",)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, "needs a key source"),
        ({"CHALLENGE_JWT_SECRET": "k", "CHALLENGE_JWT_ALGORITHMS": "RS256"}, "algorithm RS256 needs jwt_jwks_url"),
        (
            {"CHALLENGE_JWT_SECRET": "k", "CHALLENGE_JWT_ALGORITHMS": "HS256,XX999"},
            "unsupported JWT algorithms ['XX999']",
        ),
        (
            {"CHALLENGE_JWT_SECRET_FILE": "/nonexistent/jwt.secret"},
            "cannot read JWT secret file /nonexistent/jwt.secret",
        ),
    ],
)
def test_config_refusals(tmp_path, env, expected):
    with pytest.raises(SettingsError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        auth_config_from_settings(settings_with(tmp_path, env=env), None)


def test_config_mode_none_needs_no_key(tmp_path):
    assert auth_config_from_settings(settings_with(tmp_path, auth="none"), None).mode == "none"


# --- the embedded secret file (X15) and token minting (X13) ----------------------------------------


def test_embedded_secret_is_created_0600_and_reused(tmp_path):
    old_umask = os.umask(0)  # even a permissive umask must not loosen the file
    try:
        path = ensure_embedded_secret(tmp_path)
    finally:
        os.umask(old_umask)
    assert path == tmp_path / "jwt.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    assert len(content) == 65 and content.endswith("\n")
    assert all(character in "0123456789abcdef" for character in content[:64])
    assert ensure_embedded_secret(tmp_path) == path
    assert path.read_text() == content
    assert read_secret_file(path) == content.strip().encode()


def test_two_data_dirs_get_different_secrets(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert ensure_embedded_secret(first).read_text() != ensure_embedded_secret(second).read_text()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_looser_secret_file_is_refused(tmp_path, mode):
    path = tmp_path / "jwt.secret"
    path.write_text("a" * 64 + "\n")
    path.chmod(mode)
    with pytest.raises(InsecureSecretFile) as caught:
        ensure_embedded_secret(tmp_path)
    message = str(caught.value)
    assert str(path) in message and f"{mode:04o}" in message and f"chmod 600 {path}" in message
    assert caught.value.exit_code == 2


def test_empty_secret_file_is_refused(tmp_path):
    path = tmp_path / "jwt.secret"
    path.write_text(" \n")
    path.chmod(0o600)
    with pytest.raises(SettingsError, match="is empty"):
        ensure_embedded_secret(tmp_path)


async def test_minted_token_round_trip(tmp_path):
    key = read_secret_file(ensure_embedded_secret(tmp_path))
    token = mint_token(key, "minted-user", ttl_s=120, claims={"namespace": "ns", "sub": "ignored", "role": "x"})
    claims = jwt.decode(token, key, algorithms=["HS256"])
    assert claims["sub"] == "minted-user" and claims["exp"] - claims["iat"] == 120 and claims["role"] == "x"
    assert await Authenticator(AuthConfig(hs256_key=key)).authenticate(bearer(token)) == "minted-user"


async def test_minted_token_with_past_now_is_expired():
    token = mint_token(SECRET, "u1", ttl_s=60, now=int(time.time()) - 3600)
    assert await rejection(hs_authenticator(), bearer(token)) == (401, "UNAUTHORIZED", "invalid token: token expired")
