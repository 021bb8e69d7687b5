"""The API's processes side by side: each one reports whether its preloaded models are ready in a
shared folder, so that /readyz, whichever process answers it, speaks for all of them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcessBoard:
    """One status file per API process in `folder` (None: this process is the only one)."""

    def __init__(self, folder: Path | None, expected: int):
        self.folder = folder
        self.expected = expected if folder is not None else 1
        self.own = "loading"

    def report(self, status: str) -> None:
        """Record this process's preload status ('loading', 'ok' or 'error: ...')."""
        self.own = status
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".api-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "models": status}, fh)
        os.replace(tmp, self.folder / f"api-{os.getpid()}.json")

    def statuses(self) -> dict[int, str]:
        """The preload status of every live API process."""
        if self.folder is None:
            return {os.getpid(): self.own}
        found = {}
        for path in self.folder.glob("api-*.json"):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):  # being replaced right now
                continue
            if _alive(entry["pid"]):
                found[entry["pid"]] = entry["models"]
        return found

    def summary(self) -> str:
        """'ok' when every expected process has its preloaded models; else what is missing."""
        statuses = self.statuses()
        errors = sorted({s for s in statuses.values() if s.startswith("error")})
        if errors:
            return "; ".join(errors)
        loading = sum(1 for s in statuses.values() if s != "ok")
        if loading:
            return f"loading in {loading} of {len(statuses)} API processes"
        if len(statuses) < self.expected:
            return f"{len(statuses)} of {self.expected} API processes ready"
        return "ok"
