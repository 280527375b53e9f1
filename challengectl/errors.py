"""The CLI's error type and exit codes (SPEC §10.5, §10.6)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_GATE = 99
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """Printed as `Error: <message>` and `Hint: <hint>` on stderr; the process exits with `exit_code`."""

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
