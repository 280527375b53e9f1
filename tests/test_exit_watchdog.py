"""The exit watchdog of a stopping service (docs/events.md#shutdown): past its deadline the process prints
every thread's stack and exits with status 1; disarmed in time, it does nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from tests.support.serve import REPO_ROOT


def run_script(body: str) -> tuple[int, str, float]:
    """(exit status, stderr, seconds) of a Python process running `body` after creating `watchdog`."""
    script = "import time\nfrom service.runtime.exit_watchdog import ExitWatchdog\nwatchdog = ExitWatchdog()\n"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(body)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def test_a_stuck_step_ends_the_process_with_status_1_and_thread_stacks() -> None:
    code, stderr, seconds = run_script(
        """
        import logging
        logging.basicConfig()
        watchdog.arm(0.5, "closing the pools")
        time.sleep(20)  # the stuck step
        """
    )
    assert code == 1
    assert seconds < 15
    assert "shutdown stuck: closing the pools not done within 0 s" in stderr
    assert "most recent call first" in stderr and 'File "<string>", line 8 in <module>' in stderr  # the sleep


def test_a_later_deadline_replaces_the_first_and_disarm_lets_the_process_finish() -> None:
    code, stderr, _ = run_script(
        """
        watchdog.arm(0.3, "first")
        watchdog.arm(3, "second")
        time.sleep(0.6)  # past the first deadline, before the second
        watchdog.disarm()
        time.sleep(0.5)
        print("finished")
        """
    )
    assert code == 0, stderr
    assert "shutdown stuck" not in stderr
