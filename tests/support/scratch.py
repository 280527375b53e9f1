"""Scratch directories for the tests' files, all under one directory that is removed when the test run ends."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_scratch_base: list[Path] = []


def scratch_dir(prefix: str) -> Path:
    """A new directory for one test's files (config homes, catalogs); all of them are removed when the
    test run ends, also when a fixture that made one never reaches its teardown."""
    if not _scratch_base:
        _scratch_base.append(Path(tempfile.mkdtemp(prefix="challengectl-tests-")))
        atexit.register(shutil.rmtree, _scratch_base[0], True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_base[0]))
