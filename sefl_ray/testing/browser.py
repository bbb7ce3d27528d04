"""The system Chromium for browser tests (Debian's `chromium`, driven by Playwright): found, or a loud skip, and
under CI (CI=true) a failure, so a missing browser never passes a CI run unseen. Playwright's own browser download
is never used: it is not reachable where this project is tested."""

from __future__ import annotations

import os
import shutil
import warnings


def chromium_or_skip(what: str) -> str:
    """The path of `chromium`; otherwise skips the calling test loudly, or fails it under CI. `what` names the
    test's subject in the message ("the report", "the annotation app")."""
    import pytest

    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the `playwright` package is missing (it is in the test extra: pip install -e '.[test]')"
    chromium = shutil.which("chromium")
    if chromium is None:
        missing = "no `chromium` on PATH (Debian: apt-get install -y chromium; `make test` does it as root)"
    if missing is None:
        return chromium
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: the browser test of {what} cannot run: {missing}")
    warnings.warn(f"BROWSER TEST SKIPPED ({what}): {missing}", stacklevel=2)
    pytest.skip(f"BROWSER TEST SKIPPED ({what}): {missing}")
