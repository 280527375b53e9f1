"""Every setting of the service and the CLI (docs/configuration.md): one frozen object, resolved from
flags > environment > config file (active profile, then top level) > built-in defaults."""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MASK = "****"


class SettingsError(Exception):
    """An invalid setting: the message names the setting and where its value came from."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """How one setting is named, parsed and defaulted."""

    name: str
    kind: str  # str | int | bool | choice
    default: Any = None
    aliases: tuple[str, ...] = ()  # reference-compatible environment names, read after CHALLENGE_<NAME>
    plain_env: str | None = None  # read as is instead of CHALLENGE_<NAME> (DATABASE_URL, REDIS_URL)
    choices: tuple[str, ...] = ()
    secret: bool = False
    minimum: int | None = None
    maximum: int | None = None
    doc: str = ""

    @property
    def env_names(self) -> tuple[str, ...]:
        primary = self.plain_env or f"CHALLENGE_{self.name.upper()}"
        return (primary, *self.aliases)


def _s(name: str, default: Any = None, **kw: Any) -> SettingSpec:
    return SettingSpec(name, "str", default, **kw)


def _i(name: str, default: int, minimum: int | None = 1, **kw: Any) -> SettingSpec:
    """A whole number, at least 1 unless `minimum` says otherwise."""
    return SettingSpec(name, "int", default, minimum=minimum, **kw)


def _n(name: str, default: int, **kw: Any) -> SettingSpec:
    """A whole number where 0 is allowed (an off switch, no limit, a port picked by the system)."""
    return _i(name, default, minimum=0, **kw)


def _b(name: str, default: bool, **kw: Any) -> SettingSpec:
    return SettingSpec(name, "bool", default, **kw)


def _c(name: str, default: str | None, choices: tuple[str, ...], **kw: Any) -> SettingSpec:
    return SettingSpec(name, "choice", default, choices=choices, **kw)


SPECS: tuple[SettingSpec, ...] = (
    # --- service (docs/configuration.md#service-settings) ---
    _s("http_host", "127.0.0.1", doc="player API bind address"),
    _n("http_port", 8000, maximum=65535),
    _n(
        "workers",
        1,
        doc="player API processes sharing http_port, beside the ingestion process; 0: one process for everything",
    ),
    _i("worker_crash_window_s", 10, doc="a worker dying this soon after its start stops the service"),
    _s("base_path", "/challenge", aliases=("BASE_PATH",)),
    _s("grpc_host", "127.0.0.1"),
    _n("grpc_port", 6565, maximum=65535),
    _s("grpc_token", secret=True, doc="optional ingest token"),
    _i("grpc_max_message_bytes", 4194304, minimum=1024),
    _i("grpc_max_concurrent_rpcs", 2048),
    _s("admin_host", "127.0.0.1"),
    _n("admin_port", 8080, maximum=65535),
    _s("admin_token", secret=True, doc="required when admin_host is not loopback"),
    _i("http_max_body_bytes", 65536),
    # HTTP limits and admission control (docs/http-api.md#http-limits)
    _i("http_max_header_bytes", 16384, minimum=1024, doc="request line + headers; more: 431 (URL alone: 414)"),
    _i("http_max_headers", 100, doc="more: 431"),
    _i("http_header_timeout_ms", 10000, doc="first byte to end of headers; later: 408"),
    _i("http_body_timeout_ms", 10000, doc="end of headers to end of body; later: 408"),
    _i("http_idle_timeout_ms", 5000, doc="connection closed after this long without a request"),
    _i("http_max_connections", 1024, doc="per process; more: 503 and close"),
    _i("http_max_inflight", 64, doc="player requests in progress per process; more: 503 at once"),
    _n("http_shed_latency_ms", 1000, doc="503 at once while recent player requests average more; 0: off"),
    _n(
        "db_pool_max_waiting",
        0,
        doc="requests queued for a full DB pool before 503 at once; 0: 2 x db_pool_max",
    ),
    _s("namespace", "accelbyte", aliases=("AB_NAMESPACE",)),
    _s("catalog_path", "config/challenges.json", aliases=("CHALLENGE_CONFIG_PATH",)),
    _s("database_url", None, plain_env="DATABASE_URL", secret=True, doc="unset: embedded PostgreSQL"),
    _s("redis_url", None, plain_env="REDIS_URL", secret=True, doc="unset: embedded Redis; 'disabled': no cache"),
    _s("data_dir", None, doc="default $XDG_DATA_HOME/challengectl"),
    _c("embedded", "auto", ("auto", "never", "always")),
    _c("migrate", "auto", ("auto", "off")),
    _n("db_pool_min", 2),
    _i("db_pool_max", 20),
    _i("db_pool_timeout_ms", 2000),
    _n("db_statement_timeout_ms", 5000),
    _i("db_conn_max_lifetime_s", 300),
    _i("db_conn_max_idle_s", 300),
    _i("redis_pool_max", 64),
    _i("redis_timeout_ms", 200),
    _i("redis_probe_interval_ms", 1000, minimum=10),
    _s("redis_key_prefix", "ch"),
    _c("redis_mode", "auto", ("auto", "standalone", "cluster"), doc="auto: asks the server (`INFO cluster`)"),
    _c(
        "readyz_redis",
        "optional",
        ("required", "optional"),
        doc="optional: Redis down is `degraded`, still ready",
    ),
    _i("cache_ttl_s", 300),
    _i("synced_ttl_s", 604800),
    _i("cache_journal_max", 100000),
    _c("auth", "jwt", ("jwt", "none")),
    _s("jwt_secret", secret=True),
    _s("jwt_secret_file", doc="embedded: <data_dir>/jwt.secret"),
    _s("jwt_jwks_url"),
    _s("jwt_algorithms", doc="HS256 with a secret, RS256,ES256 with a JWKS URL"),
    _s("jwt_issuer"),
    _s("jwt_audience"),
    _n("jwt_leeway_s", 30),
    _i("jwks_refresh_s", 600, aliases=("REFRESH_INTERVAL",)),
    _c("reward_mode", "log", ("log", "webhook")),
    _s("reward_webhook_url"),
    _i("reward_webhook_timeout_ms", 2000),
    _n("reward_webhook_retries", 3),
    _s("reward_webhook_secret", secret=True),
    _i("claim_timeout_ms", 10000),
    _c("ack_mode", "commit", ("commit", "buffered")),
    _i("ack_timeout_ms", 10000),
    _i("flush_interval_ms", 50),
    _i("flush_workers", 4, minimum=None, doc="1-32 partitions"),
    _i("flush_batch_max", 5000),
    _n("flush_combine_max", 500),
    _i("flush_rows_max", 20000),
    _i("buffer_max_entries", 20000),
    _n("buffer_full_wait_ms", 200),
    _i("ingest_max_batch", 1000),
    _i("dedup_ttl_s", 86400),
    _i("dedup_pending_ttl_s", 60, minimum=3),
    _i("dedup_lru_size", 1000000),
    _i("shutdown_timeout_s", 30),
    _n("startup_timeout_s", 60),
    _c("log_level", "info", ("debug", "info", "warning", "error"), aliases=("LOG_LEVEL",)),
    _c("log_format", None, ("json", "text"), doc="json when stderr is not a TTY, else text"),
    _s("config_file"),
    _s("profile"),
    # --- CLI client (docs/configuration.md#cli-settings) ---
    _s("api_url", None, doc="default http://<http_host>:<http_port><base_path>"),
    _s("grpc_addr", "127.0.0.1:6565"),
    _s("admin_url", "http://127.0.0.1:8080"),
    _s("user"),
    _s("token", secret=True),
    _c("output", None, ("table", "json", "yaml", "csv", "text"), doc="table on a TTY, json when piped"),
    _i("timeout_s", 10),
    _b("debug", False),
)

SPECS_BY_NAME: dict[str, SettingSpec] = {spec.name: spec for spec in SPECS}

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class Settings:
    """The effective settings. `sources[name]` is one of default, file, env, flag."""

    http_host: str
    http_port: int
    workers: int
    worker_crash_window_s: int
    base_path: str
    grpc_host: str
    grpc_port: int
    grpc_token: str | None
    grpc_max_message_bytes: int
    grpc_max_concurrent_rpcs: int
    admin_host: str
    admin_port: int
    admin_token: str | None
    http_max_body_bytes: int
    http_max_header_bytes: int
    http_max_headers: int
    http_header_timeout_ms: int
    http_body_timeout_ms: int
    http_idle_timeout_ms: int
    http_max_connections: int
    http_max_inflight: int
    http_shed_latency_ms: int
    db_pool_max_waiting: int
    namespace: str
    catalog_path: str
    database_url: str | None
    redis_url: str | None
    data_dir: str | None
    embedded: str
    migrate: str
    db_pool_min: int
    db_pool_max: int
    db_pool_timeout_ms: int
    db_statement_timeout_ms: int
    db_conn_max_lifetime_s: int
    db_conn_max_idle_s: int
    redis_pool_max: int
    redis_timeout_ms: int
    redis_probe_interval_ms: int
    redis_key_prefix: str
    redis_mode: str
    readyz_redis: str
    cache_ttl_s: int
    synced_ttl_s: int
    cache_journal_max: int
    auth: str
    jwt_secret: str | None
    jwt_secret_file: str | None
    jwt_jwks_url: str | None
    jwt_algorithms: str | None
    jwt_issuer: str | None
    jwt_audience: str | None
    jwt_leeway_s: int
    jwks_refresh_s: int
    reward_mode: str
    reward_webhook_url: str | None
    reward_webhook_timeout_ms: int
    reward_webhook_retries: int
    reward_webhook_secret: str | None
    claim_timeout_ms: int
    ack_mode: str
    ack_timeout_ms: int
    flush_interval_ms: int
    flush_workers: int
    flush_batch_max: int
    flush_combine_max: int
    flush_rows_max: int
    buffer_max_entries: int
    buffer_full_wait_ms: int
    ingest_max_batch: int
    dedup_ttl_s: int
    dedup_pending_ttl_s: int
    dedup_lru_size: int
    shutdown_timeout_s: int
    startup_timeout_s: int
    log_level: str
    log_format: str | None
    config_file: str | None
    profile: str | None
    api_url: str | None
    grpc_addr: str
    admin_url: str
    user: str | None
    token: str | None
    output: str | None
    timeout_s: int
    debug: bool
    sources: Mapping[str, str]

    def resolved_data_dir(self) -> Path:
        """The data dir: the setting, else $XDG_DATA_HOME/challengectl, else ~/.local/share/challengectl."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg else Path.home() / ".local" / "share"
        return base / "challengectl"

    def resolved_log_format(self) -> str:
        if self.log_format:
            return self.log_format
        return "text" if sys.stderr.isatty() else "json"

    def resolved_api_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        return f"http://{host}:{self.http_port}{self.base_path}"

    def cache_disabled(self) -> bool:
        return (self.redis_url or "").strip().lower() == "disabled"

    def effective(self, reveal_secrets: bool = False) -> dict[str, dict[str, Any]]:
        """Every setting as {"value", "source"}; secrets masked unless revealed (docs/http-api.md#admin-and-metrics, docs/configuration.md#sources-and-precedence)."""
        result: dict[str, dict[str, Any]] = {}
        for spec in SPECS:
            value = getattr(self, spec.name)
            if value is not None and not reveal_secrets:
                value = mask(spec, value)
            result[spec.name] = {"value": value, "source": self.sources[spec.name]}
        return result


def mask(spec: SettingSpec, value: Any) -> Any:
    """Hide a secret. URLs keep their shape with the password masked, so operators can still read them;
    a URL in any setting has its secret-looking query parameters masked (`?password=`, `?token=`)."""
    if spec.secret and spec.name not in ("database_url", "redis_url"):
        return MASK
    if isinstance(value, str) and ("://" in value or (spec.name == "database_url" and "=" in value)):
        return mask_url_password(value)
    return value


# Query or keyword parameter names whose values are credentials (libpq's password and sslpassword,
# webhook/JWKS tokens, signatures, API keys).
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature|sig$", re.IGNORECASE)


def is_secret_parameter(name: str) -> bool:
    """Whether a URL query or libpq keyword parameter named `name` carries a credential."""
    return bool(_SECRET_PARAMETER.search(name))


def mask_url_password(url: str) -> str:
    """Mask every credential of a URL or libpq key=value string, keeping its shape.

    `postgresql://u:pw@h/db?sslpassword=x` → `postgresql://u:****@h/db?sslpassword=****`;
    `host=h password=pw` → `host=h password=****`.
    """
    if "://" not in url:
        return " ".join(_masked_pair(part) for part in url.split())
    scheme, rest = url.split("://", 1)
    before_query, question, query = rest.partition("?")
    netloc, slash, path = before_query.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hosts}"
    if question:
        query, hash_mark, fragment = query.partition("#")
        query = "&".join(_masked_pair(pair) for pair in query.split("&")) + hash_mark + fragment
    return f"{scheme}://{netloc}{slash}{path}{question}{query}"


def _masked_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    return f"{name}={MASK}" if equals and value and is_secret_parameter(name) else pair


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    xdg = (os.environ if environ is None else environ).get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "challengectl" / "config.toml"


def _parse(spec: SettingSpec, raw: Any, source: str) -> Any:
    """Convert a raw value (string from env, TOML value, flag value) to the setting's type."""
    where = f"setting '{spec.name}' from {source}"
    if raw is None:
        return None
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(f"invalid {where}: {raw!r} is not a boolean (true/false/1/0/yes/no)")
    if spec.kind == "int":
        if isinstance(raw, bool):
            raise SettingsError(f"invalid {where}: {raw!r} is not an integer")
        try:
            value = int(str(raw).strip()) if not isinstance(raw, int) else raw
        except ValueError:
            raise SettingsError(f"invalid {where}: {raw!r} is not an integer") from None
        if spec.minimum is not None and value < spec.minimum:
            raise SettingsError(f"invalid {where}: {value} is below the minimum {spec.minimum}")
        if spec.maximum is not None and value > spec.maximum:
            raise SettingsError(f"invalid {where}: {value} is above the maximum {spec.maximum}")
        return value
    text = str(raw)
    if spec.kind == "choice":
        text = text.strip().lower()
        if text not in spec.choices:
            raise SettingsError(f"invalid {where}: {raw!r} (expected one of {', '.join(spec.choices)})")
        return text
    return text


def _env_value(spec: SettingSpec, environ: Mapping[str, str]) -> tuple[Any, str] | None:
    for env_name in spec.env_names:
        value = environ.get(env_name)
        if value is not None and value != "":
            return value, f"env {env_name}"
    if spec.name == "auth":
        legacy = environ.get("PLUGIN_GRPC_SERVER_AUTH_ENABLED", "").strip().lower()
        if legacy in _FALSE:
            return "none", "env PLUGIN_GRPC_SERVER_AUTH_ENABLED"
    return None


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    if not path.exists():
        if explicit:
            raise SettingsError(f"invalid setting 'config_file': {path} does not exist")
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"invalid config file {path}: {exc}") from None


def _file_layer(document: Mapping[str, Any], profile: str | None, path: Path) -> dict[str, Any]:
    """The config file's values: the active profile's section over the top level."""
    layer = {key: value for key, value in document.items() if key != "profiles"}
    if profile:
        profiles = document.get("profiles", {})
        if profile not in profiles:
            raise SettingsError(f"invalid setting 'profile': no [profiles.{profile}] in {path}")
        layer.update(profiles[profile])
    unknown = sorted(key for key in layer if key not in SPECS_BY_NAME)
    if unknown:
        raise SettingsError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    return layer


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting. `flags` maps setting names to values given on the command line
    (None means the flag was not given)."""
    flags = {name: value for name, value in (flags or {}).items() if value is not None}
    environ = os.environ if environ is None else environ
    unknown_flags = sorted(name for name in flags if name not in SPECS_BY_NAME)
    if unknown_flags:
        raise ValueError(f"unknown setting names: {unknown_flags}")

    def early(name: str) -> tuple[Any, str] | None:
        if name in flags:
            return flags[name], "flag"
        return _env_value(SPECS_BY_NAME[name], environ)

    config_given = early("config_file")
    config_path = Path(str(config_given[0])).expanduser() if config_given else default_config_path(environ)
    document = _read_config_file(config_path, explicit=config_given is not None)
    profile_given = early("profile") or ((document["profile"], "file") if "profile" in document else None)
    profile = str(profile_given[0]) if profile_given else None
    file_layer = _file_layer(document, profile, config_path) if document else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        raw: Any
        if spec.name in flags:
            raw, source, label = flags[spec.name], "flag", "flag"
        elif (found := _env_value(spec, environ)) is not None:
            raw, label = found
            source = "env"
        elif spec.name in file_layer:
            raw, source, label = file_layer[spec.name], "file", f"config file {config_path}"
        else:
            values[spec.name] = spec.default
            sources[spec.name] = "default"
            continue
        values[spec.name] = _parse(spec, raw, label)
        sources[spec.name] = source
    return Settings(**values, sources=sources)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost count as loopback (docs/http-api.md#authentication)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_STARTUP_CHECKS: tuple[tuple[str, Callable[[Settings, bool], str | None]], ...] = (
    (
        "base_path",
        lambda s, e: (
            None
            if s.base_path.startswith("/") and not s.base_path.endswith("/")
            else f"'{s.base_path}' must start with '/' and must not end with '/'"
        ),
    ),
    (
        "auth",
        lambda s, e: (
            None
            if s.auth != "none" or is_loopback(s.http_host)
            else f"auth=none requires a loopback http_host, got '{s.http_host}'"
        ),
    ),
    (
        "admin_token",
        lambda s, e: (
            None
            if s.admin_token or is_loopback(s.admin_host)
            else f"admin_token is required when admin_host '{s.admin_host}' is not a loopback address"
        ),
    ),
    (
        "reward_webhook_url",
        lambda s, e: (
            None
            if s.reward_mode != "webhook" or s.reward_webhook_url
            else "reward_mode=webhook requires reward_webhook_url"
        ),
    ),
    (
        "auth",
        lambda s, e: (
            None
            if s.auth != "jwt" or e or s.jwt_secret or s.jwt_secret_file or s.jwt_jwks_url
            else "auth=jwt needs a key source: jwt_secret, jwt_secret_file or jwt_jwks_url"
        ),
    ),
    (
        "flush_workers",
        lambda s, e: (
            None if 1 <= s.flush_workers <= 32 else f"flush_workers must be between 1 and 32, got {s.flush_workers}"
        ),
    ),
    (
        "redis_key_prefix",
        lambda s, e: (
            None
            if "{" not in s.redis_key_prefix and "}" not in s.redis_key_prefix and s.redis_key_prefix
            else "redis_key_prefix must be non-empty and must not contain '{' or '}'"
        ),
    ),
    (
        "db_pool_min",
        lambda s, e: (
            None
            if s.db_pool_min <= s.db_pool_max
            else f"db_pool_min ({s.db_pool_min}) is above db_pool_max ({s.db_pool_max})"
        ),
    ),
)


def validate_for_serve(settings: Settings, embedded_postgres: bool) -> None:
    """The startup refusals of docs/configuration.md#service-settings (exit code 2), each naming the setting and its source."""
    for name, check in _STARTUP_CHECKS:
        problem = check(settings, embedded_postgres)
        if problem:
            raise SettingsError(f"invalid setting '{name}' (from {settings.sources[name]}): {problem}")


def service_processes(workers: int) -> int:
    """Processes of one instance that open a player-API pool: with workers >= 1, the workers and the main
    (ingestion) process (docs/configuration.md#service-settings db_pool_max); with 0, the one process."""
    return workers + 1 if workers >= 1 else 1


def connections_per_instance(workers: int, db_pool_max: int, flush_workers: int) -> int:
    """PostgreSQL connections one instance may open at full pools: its API pools plus the flusher's."""
    return service_processes(workers) * db_pool_max + flush_workers
