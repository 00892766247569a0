"""The pinned set installs on a machine that is not this one: PyPI alone, no wheel folder, no pip configuration.

This machine's pip adds a local wheel folder (PIP_FIND_LINKS, /etc/pip.conf), local indexes and constraints; a pin
that only resolves there (``torch==2.13.0+cpu``) breaks every user's `make demo` at install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
PYPI = "https://pypi.org/simple"
# what can point pip at other packages than PyPI's, besides its configuration files
PIP_SOURCES = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT")


def _pins() -> list[str]:
    return [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.split("#")[0].strip()]


def test_pins_name_public_versions_only():
    """A local version label (``+cpu``) exists only on the index that built it; the CPU build is opt-in."""
    local = [pin for pin in _pins() if re.search(r"==[^;\s]*\+", pin)]
    assert not local, f"requirements.txt pins local versions that PyPI does not have: {local}"
    makefile = (REPO / "Makefile").read_text()
    assert "/opt/" not in makefile and "find-links" not in makefile, "the Makefile uses this machine's wheel folder"


def _pypi_reachable() -> bool:
    try:
        return requests.head(f"{PYPI}/pip/", timeout=10).status_code < 500
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_the_pinned_set_resolves_on_pypi_alone():
    if not _pypi_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {PYPI} is unreachable: this check must run in CI")
        pytest.skip(f"{PYPI} unreachable (no network?): cannot check that requirements.txt resolves there")
    env = {k: v for k, v in os.environ.items() if k not in PIP_SOURCES}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
         "--index-url", PYPI, "-r", str(REPO / "requirements.txt")],
        env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in result.stderr.splitlines() if "Could not find" in line or "No matching" in line]
    why = errors or result.stderr[-3000:]
    assert result.returncode == 0, f"pip on PyPI alone cannot install requirements.txt: {why}"
