"""`python -m workers.flower [flower options]`: Celery's monitor, refusing a placeholder login.

Flower listens on every interface unless `--address` says otherwise; there it only starts with a
FLOWER_BASIC_AUTH whose passwords are neither documented placeholders nor short.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from service.core.settings import flower_auth_refusal


def _address(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--address="):
            return arg.split("=", 1)[1]
        if arg == "--address" and i + 1 < len(argv):
            return argv[i + 1]
    return os.environ.get("FLOWER_ADDRESS", "")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def refusal(argv: list[str], environ: dict[str, str]) -> str | None:
    """Why Flower must not start with these options and environment, or None."""
    if _loopback(_address(argv)):
        return None
    return flower_auth_refusal(environ.get("FLOWER_BASIC_AUTH", ""))


def main() -> None:
    argv = sys.argv[1:]
    reason = refusal(argv, dict(os.environ))
    if reason:
        print(reason, file=sys.stderr)
        raise SystemExit(2)
    os.execvp("celery", ["celery", "-A", "workers.celery_app", "flower", *argv])


if __name__ == "__main__":
    main()
