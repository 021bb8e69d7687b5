"""docker-compose.yml and the Dockerfile run for real: `make compose-check` as a test.

Opt-in (TRAINYARD_COMPOSE_CHECK=1): the check builds the image, with torch, and runs the whole stack on
a private Docker engine, which takes minutes and root. Asked for but impossible here (not root, no
apt-get to install the engine), it is skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support.servers import REPO, require

pytestmark = pytest.mark.compose


@pytest.mark.timeout(2400)
def test_compose_stack_trains_survives_a_killed_worker_and_refuses_placeholders():
    if os.environ.get("TRAINYARD_COMPOSE_CHECK") != "1":
        pytest.skip("set TRAINYARD_COMPOSE_CHECK=1 (or run `make compose-check`) to run the stack in Docker")
    can_start = os.geteuid() == 0 and (shutil.which("dockerd") or shutil.which("apt-get")) is not None
    require(can_start, "a private Docker engine needs root and dockerd (or apt-get to install docker.io)")
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "compose_check.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "compose check passed" in result.stdout
