"""What the tests need from the machine, and one rule for when it is missing.

The shared data beside the repository (``../shared/data``, or ``$ARENA_SHARED_DATA``), the
PostgreSQL server, Debian's chromium and the optional extras are all present under CI, where
``.ci/run`` installs or starts them. A developer's machine may lack one: its tests are then
skipped with the reason, while under CI the same absence fails the run, so no skip can hide a
missing part there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from arena.config import REPO_ROOT

SHARED_DATA = Path(os.environ.get("ARENA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def unavailable(reason: str) -> NoReturn:
    """Skip the test (or the module, when called at import) for ``reason``; fail under CI."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)
