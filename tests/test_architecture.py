"""The one-way rooms, enforced: models imports nothing of ours; core imports neither the API nor the
workers nor a web framework; the API and the workers never import each other; no router imports
another router, and no router commits or opens a session by hand (the core function it calls owns
the transaction; sessions come from service/api/deps.py). Inside models, the rooms by stage of a
model's life import each other one way (MODEL_ROOMS), inference never imports training, and no
module imports another that imports it back.

Every import counts, including those inside functions (they are still dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.servers import REPO

PACKAGES = ("models", "service", "workers")
# room -> the packages it must not import
FORBIDDEN = {
    "models": ("service", "workers", "migrations", "tests", "bench", "docs"),  # nothing of ours
    "service.core": ("service.api", "service.cli", "workers", "fastapi", "starlette"),  # core speaks no HTTP
    "service.api": ("service.cli", "workers"),
    "service.cli": ("service.api", "workers"),  # an HTTP client and a supervisor of processes
    "workers": ("service.api", "service.cli"),
}
ROUTERS = "service.api.routers"
SCHEMAS = "service.api.schemas"  # the bottom of the API room: built from core and models only
# The rooms inside models, by stage of a model's life, each with the rooms it may import besides
# its own: spec -> nets, data -> spec, training and inference -> data, nets, spec (and never each
# other). The modules at models/'s top level (the checkpoint format, the LRU cache, device names)
# are under every room: any room may import them, and they import no room.
MODEL_ROOMS = {
    "models.nets": (),
    "models.spec": ("models.nets",),  # the backbones a spec may name, and whether its network fits
    "models.data": ("models.spec",),
    "models.training": ("models.data", "models.nets", "models.spec"),
    "models.inference": ("models.data", "models.nets", "models.spec"),
}


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


def model_room(name: str) -> str | None:
    """The room inside models that a module (or a name imported from it) belongs to; None for one
    at models/'s top level."""
    return next((room for room in MODEL_ROOMS if _within(name, room)), None)


def _model_room_violation(module: str, name: str) -> str | None:
    """Why a module of models may not import `name` (another module of models), or None."""
    own, other = model_room(module), model_room(name)
    if other is None or other == own:
        return None
    if own is None:
        return "a module at models/'s top level imports no room"
    if own == "models.inference" and other == "models.training":
        return "inference never imports training"
    if other not in MODEL_ROOMS[own]:
        return f"{own} imports only {', '.join(MODEL_ROOMS[own]) or 'its own modules'} of models' rooms"
    return None


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """What a module imports against the rules, as readable lines."""
    rooms = [room for room in FORBIDDEN if _within(module, room)]
    room = max(rooms, key=len, default=None)
    found = []
    for line, name in imports(source, module, is_package):
        if room and any(_within(name, banned) for banned in FORBIDDEN[room]):
            found.append(f"{module}:{line} imports {name} ({room} must not)")
        why = _model_room_violation(module, name) if _within(module, "models") and _within(name, "models") else None
        if why:
            found.append(f"{module}:{line} imports {name} ({why})")
        if (
            _within(module, ROUTERS)
            and module != ROUTERS
            and _within(name, ROUTERS)
            and name != ROUTERS
            and not _within(name, module)
        ):
            found.append(f"{module}:{line} imports {name} (a router must not import another router)")
        if _within(module, SCHEMAS) and _within(name, "service.api") and not _within(name, SCHEMAS):
            found.append(f"{module}:{line} imports {name} (schemas import no other part of the API)")
    return found


def project_modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield module_name(path, REPO), path


def module_imports(sources: dict[str, str], packages: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """module -> the other modules of `sources` it imports (a name imported from a module counts as
    that module); `packages` are the modules that are a package's __init__."""
    graph = {}
    for module, source in sources.items():
        graph[module] = set()
        for _, name in imports(source, module, module in packages):
            parts = name.split(".")
            found = next((prefix for n in range(len(parts), 0, -1) if (prefix := ".".join(parts[:n])) in sources), None)
            if found is not None and found != module:
                graph[module].add(found)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that import each other round in a circle, as groups (Tarjan's strongly connected
    components of more than one module)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_of_models_imports_one_that_imports_it_back():
    """Every import counts, including those inside functions and under TYPE_CHECKING."""
    modules = {module: path for module, path in project_modules() if _within(module, "models")}
    sources = {module: path.read_text() for module, path in modules.items()}
    packages = frozenset(module for module, path in modules.items() if path.name == "__init__.py")
    assert import_cycles(module_imports(sources, packages)) == []


@pytest.mark.parametrize(
    "sources",
    [
        {
            "models.nets.archs": "def pretrained():\n    from models.nets.pretrained import Pretrained",
            "models.nets.pretrained": "from models.nets.archs import load_state",
        },
        {
            "models.data.dataset": "if TYPE_CHECKING:\n    from models.data.splits import Rows",
            "models.data.splits": "from .dataset import Dataset",
        },
        {
            "models.spec.job": "import models.nets.archs",
            "models.nets.archs": "from models.nets import cost",
            "models.nets.cost": "from models.spec.job import JobSpec",
        },
    ],
)
def test_an_import_cycle_is_caught(sources):
    assert import_cycles(module_imports(sources)) != []


def test_imports_one_way_are_no_cycle():
    sources = {
        "models.spec.job": "from models.nets.pretrained import backbone_names",
        "models.nets.pretrained": "from models.nets.state_dict import load_state",
        "models.nets.archs": "from models.nets.state_dict import load_state\nimport torch",
        "models.nets.state_dict": "from collections import OrderedDict",
    }
    assert import_cycles(module_imports(sources)) == []


def test_the_rooms_inside_models_have_an_order():
    """Every subpackage of models has its place in MODEL_ROOMS, whose rooms import each other one way."""
    assert {f"models.{path.parent.name}" for path in (REPO / "models").glob("*/__init__.py")} == set(MODEL_ROOMS)
    assert import_cycles({room: set(allowed) for room, allowed in MODEL_ROOMS.items()}) == []


def test_every_import_points_the_right_way():
    found = [
        v
        for module, path in project_modules()
        for v in violations(module, path.read_text(), path.name == "__init__.py")
    ]
    assert found == []


def _handles_a_session(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name == "close":  # a session's, not an uploaded file's
        return isinstance(func, ast.Attribute) and "session" in ast.unparse(func.value).lower()
    return name in {"commit", "session_scope", "read_scope"}


def session_handling(source: str) -> list[int]:
    """The lines of a module that commit or close a session, or open one by hand."""
    return [
        node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) and _handles_a_session(node)
    ]


def test_no_router_commits_or_opens_a_session():
    found = [
        f"{module}:{line}"
        for module, path in project_modules()
        if _within(module, ROUTERS)
        for line in session_handling(path.read_text())
    ]
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
    assert {
        "service.core.jobs",
        "service.core.broker",
        "service.api.app",
        "workers.tasks",
        "models.checkpoint",
        "models.nets.archs",
        "models.spec.job",
        "models.data.loading",
        "models.training.engine",
        "models.inference.predictor",
    } <= modules
    assert len([m for m in modules if m.startswith(ROUTERS + ".")]) >= 8


@pytest.mark.parametrize(
    "module, source",
    [
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
        ("models.data.loading", "from tests.support.datagen import png_bytes"),
        # rooms inside models: one way, and inference never imports training
        ("models.nets.archs", "from models.spec.job import JobSpec"),
        ("models.nets.cost", "def f():\n    from models.training.engine import Limits"),
        ("models.spec.job", "from models.data.dataset import Dataset"),
        ("models.data.loading", "from models.training import engine"),
        ("models.data.augment", "from ..inference.predictor import Predictor"),
        ("models.training.engine", "from models.inference.evaluation import evaluate"),
        ("models.inference.predictor", "def f():\n    from models.training.engine import eval_batch_size"),
        ("models.inference.onnx_runtime", "import models.training.frozen"),
        ("models.checkpoint", "from models.spec.job import JobSpec"),
        ("models.devices", "from models import training"),
    ],
)
def test_a_wrong_way_import_is_caught(module, source):
    assert violations(module, source) != []


def test_inference_importing_training_is_named_as_such():
    """Whatever MODEL_ROOMS allows, inference never imports training."""
    found = violations("models.inference.predictor", "from models.training.engine import eval_batch_size")
    assert found and all("inference never imports training" in line for line in found)


@pytest.mark.parametrize(
    "module, source",
    [
        ("service.api.routers.jobs", "from service.core import jobs\nfrom service.api.schemas.jobs import JobPublic"),
        ("service.api.routers", "from service.api.routers import jobs, predict"),
        ("workers.runner", "from service.core.db import session_scope\nfrom models.training.engine import fit"),
        ("service.core.jobs", "from models.spec.job import JobSpec\nfrom .tables import Job"),
        ("models.spec.problems", "from models.nets.archs import shape_problems\nfrom .job import JobSpec"),
        ("models.data.dataset", "from models.spec.problems import DatasetInfo\nfrom models.data.rows import Rows"),
        (
            "models.training.engine",
            "from models import devices\nfrom models.data.loading import load_dataset\n"
            "from models.nets.cost import eval_batch_size\nfrom models.checkpoint import FORMAT",
        ),
        (
            "models.inference.predictor",
            "from models.nets.archs import build_model\nfrom models.data.contract import "
            "InputContract\nfrom models.checkpoint import read_checkpoint",
        ),
        ("models.inference.onnx_runtime", "from .interchange import onnx_bytes"),
    ],
)
def test_a_right_way_import_passes(module, source):
    assert violations(module, source) == []
