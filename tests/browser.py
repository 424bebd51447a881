"""Headless Chromium for the report tests: the page's DOM after its scripts ran, and their status."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str | None:
    """Debian's chromium (or chromium-browser), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def flags(profile: Path) -> list[str]:
    """A headless, offline, extension-free browser with its own profile folder."""
    browser = chromium()
    if browser is None:
        if os.environ.get("PEFTSEARCH_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-default-apps", "--disable-extensions",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000",
    ]  # fmt: skip


def dump_dom(page: Path, profile: Path) -> tuple[str, dict]:
    """(the DOM of ``page`` after its scripts ran, the status its last script wrote)."""
    dom = subprocess.run(
        [*flags(profile), "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="js-status">([^<]*)</pre>', dom.stdout)
    assert found, "the page's last script never ran"
    return dom.stdout, json.loads(found.group(1))
