"""Player authentication (docs/http-api.md#authentication): JWT verification (HS256 secret or a JWKS of RS256/ES256 keys),
the `auth = none` mock header, the embedded `jwt.secret` file and token minting for local use.

Every failure is an `ApiError` carrying exactly the status, errorCode and message of the docs/http-api.md#authentication
table; the reason behind an `invalid token` is short and never contains the token or a key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from jwt.algorithms import get_default_algorithms
from prometheus_client import Counter

from service.config.settings import Settings, SettingsError
from service.domain.user_ids import is_valid_user_id
from service.transport.errors import ApiError
from service.transport.hs256 import FastHs256

JWKS_FETCHES = Counter(
    "challenge_jwks_fetches_total",
    "JWKS downloads by outcome",
    ["result"],
)

log = logging.getLogger("challengectl.auth")

SECRET_FILE_NAME = "jwt.secret"
MOCK_USER_HEADER = "x-mock-user-id"
# docs/http-api.md#authentication: an unknown `kid` refreshes the JWKS at most once per this many seconds; the same limit
# spaces out retries while no key could ever be fetched, so a down JWKS server is not hammered.
JWKS_MIN_REFETCH_S = 10.0
JWKS_FETCH_TIMEOUT_S = 5.0
DEFAULT_TOKEN_CACHE_SIZE = 32768
MIN_HS256_KEY_BYTES = 32

_SUPPORTED_ALGORITHMS = frozenset(name for name in get_default_algorithms() if name != "none")


def _is_symmetric(algorithm: str) -> bool:
    return algorithm.startswith("HS")


@dataclass(frozen=True)
class AuthConfig:
    """How players authenticate. With `algorithms` empty, the defaults of docs/configuration.md#service-settings apply: HS256 with a
    key, RS256 and ES256 with a JWKS URL (all three with both)."""

    mode: str = "jwt"
    hs256_key: bytes | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ()
    issuer: str | None = None
    audience: str | None = None
    leeway_s: int = 30
    jwks_refresh_s: int = 600

    def __post_init__(self) -> None:
        if self.mode not in ("jwt", "none"):
            raise ValueError(f"auth mode must be 'jwt' or 'none', got {self.mode!r}")
        if self.mode == "none":
            return
        if not self.hs256_key and not self.jwks_url:
            raise ValueError("auth=jwt needs a key source: jwt_secret, jwt_secret_file or jwt_jwks_url")
        if not self.algorithms:
            defaults = (("HS256",) if self.hs256_key else ()) + (("RS256", "ES256") if self.jwks_url else ())
            object.__setattr__(self, "algorithms", defaults)
        unknown = [name for name in self.algorithms if name not in _SUPPORTED_ALGORITHMS]
        if unknown:
            raise ValueError(f"unsupported JWT algorithms {unknown}; supported: {sorted(_SUPPORTED_ALGORITHMS)}")
        for name in self.algorithms:
            if _is_symmetric(name) and not self.hs256_key:
                raise ValueError(f"algorithm {name} needs jwt_secret or jwt_secret_file")
            if not _is_symmetric(name) and not self.jwks_url:
                raise ValueError(f"algorithm {name} needs jwt_jwks_url")

    @property
    def symmetric_algorithms(self) -> list[str]:
        return [name for name in self.algorithms if _is_symmetric(name)]

    @property
    def asymmetric_algorithms(self) -> list[str]:
        return [name for name in self.algorithms if not _is_symmetric(name)]


def auth_config_from_settings(settings: Settings, data_dir_secret: Path | None) -> AuthConfig:
    """Build the AuthConfig from the settings. The HS256 key is `jwt_secret` (UTF-8), else the content of
    `jwt_secret_file`, else of `data_dir_secret` (the embedded `jwt.secret`, when the caller created one).
    Raises SettingsError (exit code 2) on an unusable combination or an unreadable secret file."""
    if settings.auth == "none":
        return AuthConfig(mode="none")
    if settings.jwt_secret:
        key: bytes | None = settings.jwt_secret.encode("utf-8")
    elif settings.jwt_secret_file:
        key = read_secret_file(Path(settings.jwt_secret_file).expanduser())
    elif data_dir_secret is not None:
        key = read_secret_file(data_dir_secret)
    else:
        key = None
    if key is not None and len(key) < MIN_HS256_KEY_BYTES:
        log.warning("the HS256 key is %d bytes long; RFC 7518 asks for at least %d", len(key), MIN_HS256_KEY_BYTES)
    algorithms = tuple(name.strip() for name in (settings.jwt_algorithms or "").split(",") if name.strip())
    try:
        return AuthConfig(
            mode="jwt",
            hs256_key=key,
            jwks_url=settings.jwt_jwks_url or None,
            algorithms=algorithms,
            issuer=settings.jwt_issuer or None,
            audience=settings.jwt_audience or None,
            leeway_s=settings.jwt_leeway_s,
            jwks_refresh_s=settings.jwks_refresh_s,
        )
    except ValueError as exc:
        raise SettingsError(f"invalid authentication settings: {exc}") from None


# --- the embedded secret file -------------------------------------------------------------------


class InsecureSecretFile(SettingsError):
    """The JWT secret file is readable or writable by group or others."""

    def __init__(self, path: Path, mode: int):
        super().__init__(
            f"JWT secret file {path} has mode {mode:04o}, which lets other users read or change it; "
            f"fix it with 'chmod 600 {path}'"
        )
        self.path = path
        self.mode = mode


def ensure_embedded_secret(data_dir: Path) -> Path:
    """Create `<data_dir>/jwt.secret` (64 lowercase hex characters = 256 random bits, then a newline,
    mode 0600) unless it exists; reuse an existing file after checking that its mode is 0600 or
    stricter (else InsecureSecretFile). Returns the path."""
    path = Path(data_dir) / SECRET_FILE_NAME
    try:
        # Created with its final mode in one call, so the secret is never readable by others, not
        # even between creation and a later chmod; O_EXCL keeps an existing secret untouched.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        check_secret_file_mode(path)
        read_secret_file(path)
        return path
    with os.fdopen(descriptor, "w", encoding="ascii") as secret_file:
        secret_file.write(secrets.token_hex(32) + "\n")
    log.info("created JWT secret %s", path)
    return path


def check_secret_file_mode(path: Path) -> None:
    """Raise InsecureSecretFile when any group or other permission bit is set."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise InsecureSecretFile(path, mode)


def read_secret_file(path: Path | str) -> bytes:
    """The HS256 key held in a secret file: its content with surrounding whitespace removed, as UTF-8."""
    try:
        content = Path(path).read_bytes().decode("utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"cannot read JWT secret file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"JWT secret file {path} is not valid UTF-8") from None
    if not content:
        raise SettingsError(f"JWT secret file {path} is empty")
    return content.encode("utf-8")


def mint_token(
    key: bytes,
    user_id: str,
    ttl_s: int = 3600,
    claims: Mapping[str, Any] | None = None,
    now: int | None = None,
) -> str:
    """An HS256 token for `user_id` with `iat` = now and `exp` = now + ttl_s; extra `claims` are added,
    but never replace `sub`, `iat` or `exp`."""
    issued_at = int(time.time()) if now is None else now
    payload = {**(claims or {}), "sub": user_id, "iat": issued_at, "exp": issued_at + ttl_s}
    return jwt.encode(payload, key, algorithm="HS256")


# --- request authentication ---------------------------------------------------------------------


MALFORMED_HEADER = "missing or malformed Authorization header"
INVALID_USER_ID = "invalid user id"


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def _invalid_token(reason: str) -> ApiError:
    return _unauthorized(f"invalid token: {reason}")


def _not_accepted() -> ApiError:
    return ApiError(403, "FORBIDDEN", "token not accepted by this service")


def _bearer_token(headers: Mapping[str, str]) -> str:
    value = headers.get("authorization")
    if not value:
        raise _unauthorized(MALFORMED_HEADER)
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise _unauthorized(MALFORMED_HEADER)
    return token


@dataclass
class _JwksState:
    """The last good key set and when it was fetched (monotonic seconds)."""

    keys_by_kid: dict[str, jwt.PyJWK] = field(default_factory=dict)
    keys_without_kid: list[jwt.PyJWK] = field(default_factory=list)
    fetched_at: float | None = None
    attempted_at: float | None = None
    refresh: asyncio.Task[bool] | None = None


class Authenticator:
    """Turns request headers into a user id (docs/http-api.md#authentication).

    Verified tokens are remembered (token string → (sub, exp)) in a bounded cache so that a player's
    repeated requests skip the signature check; expiry is still enforced on every hit. `clock` (wall
    time, for expiry) and `monotonic` (JWKS refresh timing) are injectable for tests.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cache_size: int = DEFAULT_TOKEN_CACHE_SIZE,
    ):
        self.config = config
        self._clock = clock
        self._monotonic = monotonic
        self._cache_size = cache_size
        self._verified: dict[str, tuple[str, float]] = {}
        self._jwks = _JwksState()
        self._session: aiohttp.ClientSession | None = None
        # Plain HS256 tokens skip PyJWT when no issuer or audience is to be checked (its judgement otherwise).
        self._fast_hs256 = (
            FastHs256(config.hs256_key, is_valid_user_id)
            if config.mode == "jwt"
            and config.hs256_key
            and "HS256" in config.algorithms
            and config.issuer is None
            and config.audience is None
            else None
        )
        self._decoder = jwt.PyJWT(
            options={
                "require": ["exp"],
                # Without a configured audience an `aud` claim is not checked (docs/http-api.md#authentication); PyJWT would
                # otherwise reject every token that carries one.
                "verify_aud": config.audience is not None,
                # `sub` is validated here with the user-id rule; `jti` means nothing to this service.
                "verify_sub": False,
                "verify_jti": False,
            }
        )

    async def authenticate(self, headers: Mapping[str, str]) -> str:
        """The user id of the request, or ApiError 401/403 as in the docs/http-api.md#authentication table."""
        if self.config.mode == "none":
            return self._mock_user(headers)
        token = _bearer_token(headers)
        cached = self._verified.get(token)
        if cached is not None:
            user_id, expires_at = cached
            if expires_at > self._clock() - self.config.leeway_s:
                return user_id
            del self._verified[token]
            raise _invalid_token("token expired")
        return await self._verify(token)

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered (bounded by `cache_size`)."""
        return len(self._verified)

    async def start(self) -> None:
        """Fetch the JWKS ahead of the first request (a failure is logged; requests retry later)."""
        if self.config.mode == "jwt" and self.config.jwks_url:
            await self._refresh_jwks()

    async def close(self) -> None:
        """Stop a running JWKS refresh and close the HTTP session."""
        refresh = self._jwks.refresh
        if refresh is not None and not refresh.done():
            refresh.cancel()
            await asyncio.gather(refresh, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _mock_user(headers: Mapping[str, str]) -> str:
        user_id = headers.get(MOCK_USER_HEADER)
        if not user_id:
            raise _unauthorized("missing X-Mock-User-Id header")
        if not is_valid_user_id(user_id):
            raise _unauthorized(INVALID_USER_ID)
        return user_id

    async def _verify(self, token: str) -> str:
        accepted = self._fast_hs256.accept(token) if self._fast_hs256 is not None else None
        if accepted is not None:
            self._remember(token, *accepted)
            return accepted[0]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _unauthorized(MALFORMED_HEADER) from None
        algorithm = header.get("alg")
        if algorithm not in self.config.algorithms:
            raise _invalid_token("algorithm not allowed")
        if _is_symmetric(algorithm):
            key: bytes | jwt.PyJWK = self.config.hs256_key  # type: ignore[assignment]
            # The allow-list is the configured family, never derived from the token's own header.
            allowed = self.config.symmetric_algorithms
        else:
            key = await self._signing_key(header.get("kid"), algorithm)
            allowed = self.config.asymmetric_algorithms
        claims = self._decode(token, key, allowed)
        user_id = claims.get("sub")
        if not is_valid_user_id(user_id):
            raise _unauthorized(INVALID_USER_ID)
        try:
            expires_at = float(claims["exp"])
        except OverflowError:  # an integer exp beyond any float: signed, but no instant
            raise _invalid_token("malformed time claim") from None
        self._remember(token, user_id, expires_at)
        return user_id

    def _decode(self, token: str, key: bytes | jwt.PyJWK, allowed: list[str]) -> dict[str, Any]:
        config = self.config
        try:
            return self._decoder.decode(
                token,
                key,
                algorithms=allowed,
                issuer=config.issuer,
                audience=config.audience,
                leeway=config.leeway_s,
            )
        except jwt.ExpiredSignatureError:
            raise _invalid_token("token expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid_token("token not yet valid") from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
            raise _not_accepted() from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim in ("iss", "aud"):
                raise _not_accepted() from None
            raise _invalid_token(f"missing {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise _invalid_token("signature verification failed") from None
        except jwt.InvalidAlgorithmError:
            raise _invalid_token("algorithm does not match the signing key") from None
        except jwt.InvalidIssuedAtError:
            raise _invalid_token("malformed iat claim") from None
        except jwt.DecodeError as exc:
            # PyJWT reports a non-numeric exp/nbf as a DecodeError ("... claim (exp) must be an
            # integer."); every other DecodeError here means the payload itself is undecodable.
            if "claim" in str(exc):
                raise _invalid_token("malformed time claim") from None
            raise _unauthorized(MALFORMED_HEADER) from None
        except jwt.InvalidTokenError:
            raise _invalid_token("invalid claims") from None

    def _remember(self, token: str, user_id: str, expires_at: float) -> None:
        if len(self._verified) >= self._cache_size:
            # Oldest-first eviction: dicts keep insertion order, so this is O(1) with no bookkeeping.
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (user_id, expires_at)

    # --- JWKS ---

    async def _signing_key(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        state = self._jwks
        if state.fetched_at is None:
            if self._may_refetch_now():
                await self._refresh_jwks()
            if state.fetched_at is None:
                raise _invalid_token("signing keys unavailable")
        elif self._monotonic() - state.fetched_at >= self.config.jwks_refresh_s:
            # Periodic refresh in the background: this request keeps using the current keys.
            self._start_refresh()
        key = self._lookup_key(kid, algorithm)
        if key is None and kid is not None and self._may_refetch_now():
            await self._refresh_jwks()
            key = self._lookup_key(kid, algorithm)
        if key is None:
            raise _invalid_token("unknown signing key")
        return key

    def _lookup_key(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._jwks.keys_by_kid.get(kid)
        # A token without `kid` is accepted only when exactly one key of its algorithm exists.
        candidates = [
            key
            for key in (*self._jwks.keys_by_kid.values(), *self._jwks.keys_without_kid)
            if key.algorithm_name == algorithm
        ]
        return candidates[0] if len(candidates) == 1 else None

    def _may_refetch_now(self) -> bool:
        """A running refresh can always be joined; a new one starts at most once per 10 s."""
        state = self._jwks
        if state.refresh is not None and not state.refresh.done():
            return True
        return state.attempted_at is None or self._monotonic() - state.attempted_at >= JWKS_MIN_REFETCH_S

    def _start_refresh(self) -> asyncio.Task[bool]:
        state = self._jwks
        if state.refresh is None or state.refresh.done():
            state.attempted_at = self._monotonic()
            state.refresh = asyncio.create_task(self._fetch_jwks(), name="jwks-refresh")
        return state.refresh

    async def _refresh_jwks(self) -> bool:
        """Join the running refresh or start one; True when a key set was installed."""
        # shield: a cancelled request must not cancel the refresh other requests are waiting on.
        return await asyncio.shield(self._start_refresh())

    async def _fetch_jwks(self) -> bool:
        url = self.config.jwks_url
        assert url is not None
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_S))
            async with self._session.get(url, headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                document = await response.json(content_type=None)
            if not isinstance(document, dict):
                raise ValueError("the document is not a JSON object")
            key_set = jwt.PyJWKSet.from_dict(document)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure keeps the previous keys; the reason goes to the log
            JWKS_FETCHES.labels(result="error").inc()
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            kept = "keeping the previous keys" if self._jwks.fetched_at is not None else "no signing keys yet"
            log.warning("JWKS fetch from %s failed (%s); %s", url, reason, kept)
            return False
        self._install(key_set)
        JWKS_FETCHES.labels(result="ok").inc()
        return True

    def _install(self, key_set: jwt.PyJWKSet) -> None:
        state = self._jwks
        usable = [key for key in key_set.keys if key.algorithm_name in self.config.asymmetric_algorithms]
        keys_by_kid = {key.key_id: key for key in usable if key.key_id is not None}
        if set(state.keys_by_kid) - set(keys_by_kid) or state.keys_without_kid:
            # A key was withdrawn: tokens verified with it must not stay accepted from the cache.
            self._verified.clear()
        state.keys_by_kid = keys_by_kid
        state.keys_without_kid = [key for key in usable if key.key_id is None]
        state.fetched_at = self._monotonic()
        log.info("JWKS loaded from %s: %d usable keys", self.config.jwks_url, len(usable))
