"""`python -m workers.flower`, the compose file's Flower: no placeholder login beyond loopback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.servers import REPO
from workers.flower import refusal

GOOD = "admin:Xq3v8NfL2pR7tZ1mK9wB4cY6hJ0dS5gA"


@pytest.mark.parametrize("basic_auth", ["", "admin:change-me", "admin:short", f"{GOOD},ops:change-me"])
def test_a_placeholder_login_is_refused_on_every_interface_but_not_on_loopback(basic_auth):
    assert refusal(["--port=5555"], {"FLOWER_BASIC_AUTH": basic_auth}) is not None
    assert refusal(["--address=0.0.0.0", "--port=5555"], {"FLOWER_BASIC_AUTH": basic_auth}) is not None
    assert refusal(["--address", "127.0.0.1"], {"FLOWER_BASIC_AUTH": basic_auth}) is None


def test_a_long_random_password_is_accepted():
    assert refusal(["--port=5555"], {"FLOWER_BASIC_AUTH": GOOD}) is None


def test_the_module_exits_2_with_how_to_generate_a_password():
    result = subprocess.run(
        [sys.executable, "-m", "workers.flower", "--port=5555"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "FLOWER_BASIC_AUTH": "admin:change-me"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "secrets.token_urlsafe(32)" in result.stderr and "24" in result.stderr
