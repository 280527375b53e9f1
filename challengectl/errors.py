"""The CLI's error type, its exit codes, and the mapping of service failures to both (docs/cli.md#exit-codes, docs/cli.md#errors-and-hints).

Every command reports a failure by raising `CliError`; `challengectl.cli.main` prints it as
`Error: <message>` / `Hint: <hint>` on stderr and exits with its `exit_code`. The helpers below turn
what a client observed (an HTTP status and body, a gRPC status, a connection failure) into a CliError
with the exit code and hint of docs/cli.md, so commands never decide exit codes for service errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # grpc is imported only by the commands that call the ingest service
    import grpc

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_GATE = 99
EXIT_INTERRUPTED = 130

# The `code` of a CLI-side error in `{"error": {"code", ...}}` when no service errorCode applies.
CODE_BY_EXIT = {
    EXIT_FAILED: "FAILED",
    EXIT_USAGE: "USAGE",
    EXIT_NOT_FOUND: "NOT_FOUND",
    EXIT_AUTH: "UNAUTHORIZED",
    EXIT_UNAVAILABLE: "UNAVAILABLE",
    EXIT_GATE: "GATE_FAILED",
    EXIT_INTERRUPTED: "INTERRUPTED",
}

EXIT_CODES_TABLE = (
    ("0", "success (also 'already done', and Ctrl-C in watch modes)"),
    ("1", "the operation failed (service business error, rejected event, internal error)"),
    ("2", "usage or configuration error (bad flag, unknown format, invalid settings, refused without --yes)"),
    ("3", "not found (HTTP 404, unknown query, nothing matched with --must-match)"),
    ("4", "authentication or authorisation failed (HTTP 401/403, no secret to mint a token)"),
    ("5", "dependency unreachable, unavailable or timed out (PostgreSQL, Redis, REST, gRPC, admin)"),
    ("99", "the command ran but a gate failed (doctor, loadtest thresholds, --fail-on, --max-util)"),
    ("130", "interrupted (Ctrl-C)"),
)

HINT_START_SERVICE = "is the service running? start it with 'challengectl serve' or set --api-url"
HINT_TOKEN = "pass --token, or mint one with 'challengectl token mint --user <id>'"
HINT_ADMIN_TOKEN = "set CHALLENGE_ADMIN_TOKEN to the service's admin_token"
HINT_UNAVAILABLE = "the service or one of its dependencies is unavailable; run 'challengectl doctor'"


class CliError(Exception):
    """Printed as `Error: <message>` and `Hint: <hint>` on stderr; the process exits with `exit_code`.

    `code` is the service's errorCode for service errors (e.g. `CHALLENGE_NOT_FOUND`), otherwise a
    CLI code derived from the exit code (`USAGE`, `UNAVAILABLE`, ...). Messages are one line and never
    hold a token, a secret or a DSN password.
    """

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_FAILED, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        self.code = code or CODE_BY_EXIT.get(exit_code, "FAILED")

    def as_json(self) -> dict[str, Any]:
        """The `{"error": {...}}` object written to stdout with `-o json` (docs/cli.md#errors-and-hints)."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "hint": self.hint or None,
                "exit_code": self.exit_code,
            }
        }


def exit_code_for_http_status(status: int) -> int:
    """401/403 → 4, 404 → 3, 502/503/504 → 5, any other 4xx/5xx → 1 (docs/cli.md#exit-codes)."""
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (502, 503, 504):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def hint_for_http_status(status: int, admin: bool = False) -> str:
    """The next step for an HTTP error status (docs/cli.md#errors-and-hints); empty for business errors."""
    if status in (401, 403):
        return HINT_ADMIN_TOKEN if admin else HINT_TOKEN
    if status in (502, 503, 504):
        return HINT_UNAVAILABLE
    return ""


def error_from_http(status: int, body: Any, method: str, url: str, admin: bool = False) -> CliError:
    """A CliError for an HTTP error response. A service error body `{"errorCode","message"}` is shown
    unchanged as `<errorCode>: <message>`; any other body gives `HTTP <status> from <method> <url>`."""
    exit_code = exit_code_for_http_status(status)
    hint = hint_for_http_status(status, admin)
    if isinstance(body, dict) and isinstance(body.get("errorCode"), str):
        message = str(body.get("message", "")).splitlines()[0] if body.get("message") else ""
        return CliError(
            f"{body['errorCode']}: {message}" if message else body["errorCode"], hint, exit_code, code=body["errorCode"]
        )
    return CliError(f"HTTP {status} from {method} {url}", hint, exit_code, code=f"HTTP_{status}")


# By grpc.StatusCode name.
_GRPC_EXIT_CODES = {
    "UNAUTHENTICATED": EXIT_AUTH,
    "PERMISSION_DENIED": EXIT_AUTH,
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "DEADLINE_EXCEEDED": EXIT_UNAVAILABLE,
    "RESOURCE_EXHAUSTED": EXIT_UNAVAILABLE,
    "INVALID_ARGUMENT": EXIT_FAILED,
    "NOT_FOUND": EXIT_NOT_FOUND,
}


def exit_code_for_grpc(status: grpc.StatusCode) -> int:
    """UNAUTHENTICATED/PERMISSION_DENIED → 4; UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED → 5;
    INVALID_ARGUMENT → 1; NOT_FOUND → 3; anything else → 1 (docs/cli.md#exit-codes)."""
    return _GRPC_EXIT_CODES.get(status.name, EXIT_FAILED)


def error_from_grpc(status: grpc.StatusCode, details: str | None, method: str, target: str) -> CliError:
    """A CliError for a failed gRPC call to `method` on `target` (host:port)."""
    exit_code = exit_code_for_grpc(status)
    detail = (details or "").splitlines()[0] if details else ""
    if exit_code == EXIT_AUTH:
        hint = "set CHALLENGE_GRPC_TOKEN to the service's grpc_token"
    elif status.name == "UNAVAILABLE":
        hint = f"is the service running? start it with 'challengectl serve' or set --grpc-addr (now {target})"
    elif exit_code == EXIT_UNAVAILABLE:
        hint = "the service is overloaded or slow; retry later, raise --timeout, or run 'challengectl doctor'"
    else:
        hint = ""
    message = f"gRPC {method} to {target} failed: {status.name}" + (f": {detail}" if detail else "")
    return CliError(message, hint, exit_code, code=status.name)


def hint_for_unreachable_rest(url_port: int | None, grpc_port: int, http_port: int) -> str:
    """The hint when the REST API did not answer: a URL aimed at the gRPC port says so (docs/cli.md#errors-and-hints)."""
    if url_port is not None and url_port == grpc_port:
        return f"{grpc_port} is the gRPC port; the REST API listens on {http_port}"
    return HINT_START_SERVICE
