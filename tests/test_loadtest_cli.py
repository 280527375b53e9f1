"""`challengectl loadtest run` exit codes and outputs against the fake player API (docs/cli.md#exit-codes, docs/loadtest.md#loadtest-run; P2, P4):
catalog mismatch → 2, unreachable service → 5, refused probe → 4, a failing threshold → 99, Ctrl-C → 130
with the reports still written (`interrupted: true`), `--write-catalog` and `--dry-run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from challengectl.loadtest.profiles import get_profile
from tests.servers import free_port
from tests.support.cli import run_cli
from tests.support.fake_player_api import FakePlayerApi
from tests.support.scratch import scratch_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_FINGERPRINT = get_profile("seed-m3").catalog().fingerprint


def cli_env(api: FakePlayerApi | None, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CHALLENGE_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "XDG_CONFIG_HOME": str(scratch_dir("cfg-")),
            "XDG_DATA_HOME": str(scratch_dir("data-")),
            "CHALLENGE_API_URL": api.api_url if api else f"http://127.0.0.1:{free_port()}/challenge",
            "CHALLENGE_ADMIN_URL": f"http://127.0.0.1:{free_port()}",
            "REDIS_URL": "disabled",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def loadtest(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    """Run `challengectl loadtest ARGS` in this process with `env` as the environment and tmp_path as cwd."""
    monkeypatch.chdir(tmp_path)

    def invoke(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        for name in list(os.environ):
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code, out, err = run_cli(["loadtest", *args], capsys)
        return subprocess.CompletedProcess(args, code, out, err)

    return invoke


INIT_ONLY = ["--profile", "seed-m3", "--auth", "none", "--duration", "0", "--procs", "1", "--sample-interval", "1s"]


@pytest.fixture
def api() -> FakePlayerApi:
    server = FakePlayerApi(fingerprint=SEED_FINGERPRINT).start()
    yield server
    server.stop()


def test_write_catalog_and_dry_run(tmp_path: Path, loadtest) -> None:
    done = loadtest(["run", "--profile", "seed-m3", "--write-catalog", "seed.json", "-o", "json"], cli_env(None))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["catalog_fingerprint"] == SEED_FINGERPRINT
    assert (tmp_path / "seed.json").exists()
    done = loadtest(
        ["run", "--profile", "seed-m3", "--dry-run", "--phase", "init=10s@50", "--duration", "20s", "-o", "json"],
        cli_env(None),
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["items"]
    assert [(r["phase"], r["api_operations"], r["events"]) for r in rows] == [
        ("init", 500, 0),
        ("gameplay", 6000, 10000),
    ]


def test_catalog_mismatch_exits_2_with_the_write_catalog_hint(loadtest) -> None:
    other = FakePlayerApi(fingerprint="feedfeedfeedfeed").start()
    try:
        done = loadtest(["run", *INIT_ONLY, "--phase", "init=1s@10"], cli_env(other))
    finally:
        other.stop()
    assert done.returncode == 2, done.stderr
    assert "Error: the service's catalog (fingerprint feedfeedfeedfeed) is not the seed-m3 catalog" in done.stderr
    assert "Hint:" in done.stderr and "--write-catalog" in done.stderr
    assert other.initialize_calls == 0, "no load may be sent before preflight passes"


def test_unreachable_service_exits_5(loadtest) -> None:
    done = loadtest(["run", *INIT_ONLY, "--phase", "init=1s@10"], cli_env(None))
    assert done.returncode == 5, done.stderr
    assert "Hint: is the service running?" in done.stderr


def test_refused_probe_exits_4(loadtest) -> None:
    refusing = FakePlayerApi(fingerprint=SEED_FINGERPRINT, refuse_auth=True).start()
    try:
        done = loadtest(["run", *INIT_ONLY, "--phase", "init=1s@10"], cli_env(refusing))
    finally:
        refusing.stop()
    assert done.returncode == 4, done.stderr
    assert "probe request was refused" in done.stderr


def test_missing_secret_exits_4(api: FakePlayerApi, loadtest) -> None:
    done = loadtest(["run", "--profile", "seed-m3", "--duration", "0", "--phase", "init=1s@10"], cli_env(api))
    assert done.returncode == 4 and "no HS256 secret" in done.stderr


@pytest.mark.slow
def test_failing_threshold_exits_99_and_writes_both_reports(tmp_path: Path, api: FakePlayerApi, loadtest) -> None:
    done = loadtest(
        [
            "run",
            *INIT_ONLY,
            "--phase",
            "init=2s@20",
            "--no-default-thresholds",
            "--threshold",
            "initialize_new:p95<1ms",
            "--threshold",
            "*:success>=100%",
            "--out",
            "run.json",
            "-o",
            "json",
        ],
        cli_env(api),
    )
    assert done.returncode == 99, done.stderr
    summary = json.loads(done.stdout)
    assert [(t["expr"], t["pass"]) for t in summary["thresholds"]] == [
        ("initialize_new:p95<1ms", False),
        ("*:success>=100%", True),
    ]
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["verdict"] == "fail" and report["overall"]["endpoints"]["initialize_new"]["count"] == 40
    assert (tmp_path / "run.md").read_text().startswith("# seed-m3 load test")
    assert any("admin" in note for note in report["resources"]["notes"])  # admin port closed: noted, not fatal


@pytest.mark.slow
def test_a_stalled_service_shows_in_the_report_as_latency(tmp_path: Path, loadtest) -> None:
    stalling = FakePlayerApi(fingerprint=SEED_FINGERPRINT, stall_after_s=1.0).start()
    try:
        done = loadtest(
            ["run", *INIT_ONLY, "--phase", "init=4s@50", "--out", "stall.json", "-o", "json"], cli_env(stalling)
        )
    finally:
        stalling.stop()
    assert done.returncode == 99, done.stderr  # initialize_new:p95<50ms fails
    report = json.loads((tmp_path / "stall.json").read_text())
    entry = report["phases"][0]["endpoints"]["initialize_new"]
    assert entry["count"] == entry["ok"] == 200  # the schedule was kept: no lost throughput
    assert entry["latency_ms"]["max"] >= 2000 and entry["latency_ms"]["p90"] >= 1000
    assert report["phases"][0]["achieved_rate"] == 50.0
    markdown = (tmp_path / "stall.md").read_text()
    assert f"| Max | — | {entry['latency_ms']['max'] / 1000:.2f} s |" in markdown


@pytest.mark.slow
def test_interrupted_run_still_writes_its_reports_and_exits_130(tmp_path: Path, api: FakePlayerApi) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "challengectl",
            "loadtest",
            "run",
            *INIT_ONLY,
            "--phase",
            "init=30s@20",
            "--out",
            "cut.json",
        ],
        env=cli_env(api),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while api.initialize_calls < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    report = json.loads((tmp_path / "cut.json").read_text())
    assert report["run"]["interrupted"] is True
    count = report["overall"]["endpoints"]["initialize_new"]["count"]
    assert 20 <= count < 600 and count == api.initialize_calls
    assert "Interrupted" in (tmp_path / "cut.md").read_text()
