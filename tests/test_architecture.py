"""The one-way rooms, enforced: models imports nothing of ours; core imports neither the API nor the
workers nor a web framework; the API and the workers never import each other; no router imports
another router, and no router commits or opens a session by hand (the core function it calls owns
the transaction; sessions come from service/api/deps.py).

Every import counts, including those inside functions (they are still dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.servers import REPO

PACKAGES = ("models", "service", "workers")
# room -> the packages it must not import
FORBIDDEN = {
    "models": ("service", "workers"),
    "service.core": ("service.api", "service.cli", "workers", "fastapi", "starlette"),  # core speaks no HTTP
    "service.api": ("service.cli", "workers"),
    "service.cli": ("service.api", "workers"),  # an HTTP client and a supervisor of processes
    "workers": ("service.api", "service.cli"),
}
ROUTERS = "service.api.routers"
SCHEMAS = "service.api.schemas"  # the bottom of the API room: built from core and models only


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every import in a module's source; `from a import b` yields a and a.b."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """What a module imports against the rules, as readable lines."""
    rooms = [room for room in FORBIDDEN if _within(module, room)]
    room = max(rooms, key=len, default=None)
    found = []
    for line, name in imports(source, module, is_package):
        if room and any(_within(name, banned) for banned in FORBIDDEN[room]):
            found.append(f"{module}:{line} imports {name} ({room} must not)")
        if (_within(module, ROUTERS) and module != ROUTERS and _within(name, ROUTERS) and name != ROUTERS
                and not _within(name, module)):
            found.append(f"{module}:{line} imports {name} (a router must not import another router)")
        if _within(module, SCHEMAS) and _within(name, "service.api") and not _within(name, SCHEMAS):
            found.append(f"{module}:{line} imports {name} (schemas import no other part of the API)")
    return found


def project_modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield module_name(path, REPO), path


def test_every_import_points_the_right_way():
    found = [v for module, path in project_modules()
             for v in violations(module, path.read_text(), path.name == "__init__.py")]
    assert found == []


def _handles_a_session(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name == "close":  # a session's, not an uploaded file's
        return isinstance(func, ast.Attribute) and "session" in ast.unparse(func.value).lower()
    return name in {"commit", "session_scope", "read_scope"}


def session_handling(source: str) -> list[int]:
    """The lines of a module that commit or close a session, or open one by hand."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and _handles_a_session(node)]


def test_no_router_commits_or_opens_a_session():
    found = [f"{module}:{line}" for module, path in project_modules() if _within(module, ROUTERS)
             for line in session_handling(path.read_text())]
    assert found == []


def test_session_handling_in_a_router_is_caught():
    assert session_handling("def view(session):\n    session.commit()") == [2]
    assert session_handling("def view():\n    with read_scope() as session:\n        pass") == [2]
    assert session_handling("def view():\n    with db.session_scope() as session:\n        pass") == [2]
    assert session_handling("def view(session):\n    session.close()") == [2]
    assert session_handling("async def view(upload):\n    await upload.close()") == []
    assert session_handling("def view(session):\n    return core.register(session)") == []


def test_the_rooms_exist():
    modules = {module for module, _ in project_modules()}
    assert {"service.core.jobs", "service.core.broker", "service.api.app", "workers.tasks",
            "models.training.engine"} <= modules
    assert len([m for m in modules if m.startswith(ROUTERS + ".")]) >= 8


@pytest.mark.parametrize("module, source", [
    ("models.training.engine", "from service.core import jobs"),
    ("models.data.loading", "def f():\n    import workers.runner"),
    ("service.core.jobs", "from service.api.serving import ModelServer"),
    ("service.core.reaper", "from workers.celery_app import app"),
    ("service.core.jobs", "from ..api import deps"),
    ("service.api.routers.jobs", "import workers.tasks"),
    ("service.api.routers.dashboard", "from service.api.routers.jobs import router"),
    ("service.api.routers.dashboard", "from service.api.routers import jobs"),
    ("service.api.routers.plots", "from .predict import classify"),
    ("workers.runner", "from service.api.serving import ModelServer"),
    ("service.cli.client", "from service.api.app import app"),
    ("service.api.schemas.predict", "from service.api.serving import LoadedModel"),
    ("service.core.submission", "from fastapi import HTTPException"),
    ("service.core.errors", "import starlette.status"),
])
def test_a_wrong_way_import_is_caught(module, source):
    assert violations(module, source) != []


@pytest.mark.parametrize("module, source", [
    ("service.api.routers.jobs", "from service.core import jobs\nfrom service.api.schemas.jobs import JobPublic"),
    ("service.api.routes", "from service.api.routers import jobs, predict"),
    ("workers.runner", "from service.core.db import session_scope\nfrom models.training.engine import fit"),
    ("service.core.jobs", "from models.spec.job import JobSpec\nfrom .tables import Job"),
])
def test_a_right_way_import_passes(module, source):
    assert violations(module, source) == []
