"""The HS256 shortcut (service/transport/hs256.py) accepts only what PyJWT accepts, with the same user id and
expiry, and plain valid tokens do take it."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from service.domain.user_ids import is_valid_user_id
from service.transport.auth import AuthConfig, Authenticator
from service.transport.errors import ApiError
from service.transport.hs256 import FastHs256

SECRET = b"0123456789abcdef0123456789abcdef-test-secret"
NOW = int(time.time())


def segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(header: Any, payload: Any, key: bytes = SECRET) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(signing_input.encode(), key)
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


PLAIN = {"alg": "HS256", "typ": "JWT"}
VALID = {"sub": "player-1", "iat": NOW, "exp": NOW + 10**7}  # valid however long after collection a test runs
TOKENS = {
    "plain": signed(PLAIN, VALID),
    "no typ": signed({"alg": "HS256"}, VALID),
    "extra claims": signed(PLAIN, {**VALID, "aud": "x", "iss": "y", "namespace": "n"}),
    "with kid": signed({**PLAIN, "kid": "k1"}, VALID),
    "kid not a string": signed({**PLAIN, "kid": 7}, VALID),
    "crit header": signed({**PLAIN, "crit": ["b64"], "b64": False}, VALID),
    "other typ": signed({"alg": "HS256", "typ": "at+jwt"}, VALID),
    "HS384 header": signed({"alg": "HS384", "typ": "JWT"}, VALID),
    "none alg": signed({"alg": "none"}, VALID),
    "wrong key": signed(PLAIN, VALID, key=b"another-secret-of-enough-length-xxxxxx"),
    "expired": signed(PLAIN, {**VALID, "exp": NOW - 5}),
    "expired beyond leeway": signed(PLAIN, {**VALID, "exp": NOW - 600}),
    "float exp": signed(PLAIN, {**VALID, "exp": NOW + 10**7 + 0.5}),
    "string exp": signed(PLAIN, {**VALID, "exp": str(NOW + 10**7)}),
    "bool exp": signed(PLAIN, {**VALID, "exp": True}),
    "no exp": signed(PLAIN, {"sub": "player-1"}),
    "null exp": signed(PLAIN, {**VALID, "exp": None}),
    "huge exp": signed(PLAIN, {**VALID, "exp": 10**400}),
    "iat in the future": signed(PLAIN, {**VALID, "iat": NOW + 10**6}),
    "iat within leeway": signed(PLAIN, {**VALID, "iat": NOW + 10}),
    "string iat": signed(PLAIN, {**VALID, "iat": "yesterday"}),
    "nbf in the future": signed(PLAIN, {**VALID, "nbf": NOW + 10**6}),
    "nbf passed": signed(PLAIN, {**VALID, "nbf": NOW - 10}),
    "no sub": signed(PLAIN, {"iat": NOW, "exp": NOW + 10**7}),
    "numeric sub": signed(PLAIN, {**VALID, "sub": 12}),
    "bad sub": signed(PLAIN, {**VALID, "sub": "has space"}),
    "payload a list": signed(PLAIN, [1, 2]),
    "payload not json": signed(PLAIN, b"{not json"),
    "header not json": f"{segment(b'{')}.{segment(VALID)}.AAAA",
    "two segments": f"{segment(PLAIN)}.{segment(VALID)}",
    "four segments": signed(PLAIN, VALID) + ".extra",
    "empty": "",
    "non ascii": signed(PLAIN, VALID) + "é",
}


async def pyjwt_outcome(token: str) -> tuple[str, float] | str:
    """What the authenticator answers with the shortcut disabled: (sub, exp) or the error."""
    authenticator = Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET))
    authenticator._fast_hs256 = None
    try:
        user_id = await authenticator.authenticate({"authorization": f"Bearer {token}"})
    except ApiError as error:
        return f"{error.status} {error.message}"
    return user_id, authenticator._verified[token][1]


@pytest.mark.parametrize("name", sorted(TOKENS))
async def test_the_shortcut_accepts_only_what_pyjwt_accepts(name: str) -> None:
    token = TOKENS[name]
    accepted = FastHs256(SECRET, is_valid_user_id).accept(token)
    if accepted is not None:
        assert await pyjwt_outcome(token) == accepted


def test_plain_valid_tokens_take_the_shortcut() -> None:
    fast = FastHs256(SECRET, is_valid_user_id)
    for name in ("plain", "no typ", "extra claims", "nbf passed"):
        assert fast.accept(TOKENS[name]) == ("player-1", float(VALID["exp"])), name


async def test_the_authenticator_uses_the_shortcut_only_without_issuer_or_audience() -> None:
    assert Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET))._fast_hs256 is not None
    assert Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET, issuer="i"))._fast_hs256 is None
    assert Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET, audience="a"))._fast_hs256 is None
    only_rs256 = AuthConfig(mode="jwt", hs256_key=SECRET, jwks_url="http://127.0.0.1:9/jwks", algorithms=("RS256",))
    assert Authenticator(only_rs256)._fast_hs256 is None


def test_a_key_pyjwt_refuses_for_hmac_disables_the_shortcut() -> None:
    pem = b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    assert FastHs256(pem, is_valid_user_id).accept(signed(PLAIN, VALID, key=pem)) is None
