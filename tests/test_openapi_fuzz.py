"""Schemathesis against a running `serve` (docs/http-api.md#openapi; issue 11 items 3 and 8): every check,
positive and negative data, coverage, fuzzing and stateful phases, with 0 failures. The OpenAPI document
must be as strict as the server: a schema-valid request the server refuses (ST202), or a schema-invalid
one it accepts, fails the run.

The budget is short for the normal test run; `CHALLENGECTL_FUZZ_EXAMPLES` (per operation, default 20) and
`CHALLENGECTL_FUZZ_SEED` (default 1) make a longer or different run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.transport.auth import mint_token
from tests.support.serve import ServeProcess, service_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "openapi-fuzz-secret-0123456789abcdef0123"
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def serve(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    with ServeProcess(service_env(pg_url, redis_url, redis_prefix, SECRET)) as process:
        yield process


def test_schemathesis_finds_no_failure(serve: ServeProcess, tmp_path: Path) -> None:
    token = mint_token(SECRET.encode(), "fuzz-player", ttl_s=3600)
    # The CLI module of the installed schemathesis, run with this interpreter.
    command = [
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file",
        str(CONFIG),
        "run",
        serve.api("/challenge/openapi.json"),
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--mode",
        "all",
        "--max-examples",
        os.environ.get("CHALLENGECTL_FUZZ_EXAMPLES", "20"),
        "--seed",
        os.environ.get("CHALLENGECTL_FUZZ_SEED", "1"),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1], result.stdout[-3000:]
