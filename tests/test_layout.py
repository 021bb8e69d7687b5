"""The tests' own layout: the fast tests mirror the tree, the tests that start processes live in
tests/e2e/, no test file name exists twice (a failure's file name alone says which file it is), and
the helpers (tests/support) are imported as a package, never by putting a folder on sys.path.

A test starts processes when it is marked e2e or compose, takes a fixture of tests/e2e/conftest.py
(the running stacks) or builds a Stack itself. That is read from the source, not run."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
PROCESS_MARKS = ("e2e", "compose")


def modules_under(root: Path = TESTS) -> list[Path]:
    return sorted(path for path in root.rglob("test_*.py") if "__pycache__" not in path.parts)


def fixture_names(source: str) -> set[str]:
    """The fixtures a module or conftest defines (functions decorated with pytest.fixture)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) in ("pytest.fixture", "fixture"):
                    found.add(node.name)
    return found


def _marks(node: ast.AST) -> set[str]:
    """The pytest.mark.NAME names used in an expression (a decorator, or pytestmark's value)."""
    return {
        sub.attr for sub in ast.walk(node) if isinstance(sub, ast.Attribute) and ast.unparse(sub.value) == "pytest.mark"
    }


def starts_processes(source: str, stack_fixtures: set[str]) -> list[str]:
    """Why a test module starts processes, as readable lines; empty when nothing says it does."""
    tree = ast.parse(source)
    own = fixture_names(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            found += [
                f"line {node.lineno}: pytestmark is {mark}"
                for mark in sorted(_marks(node.value))
                if mark in PROCESS_MARKS
            ]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found += [
                f"line {node.lineno}: {node.name} is marked {mark}"
                for decorator in node.decorator_list
                for mark in sorted(_marks(decorator))
                if mark in PROCESS_MARKS
            ]
            if not isinstance(node, ast.ClassDef) and (node.name.startswith("test") or node.name in own):
                found += [
                    f"line {node.lineno}: {node.name} takes the stack fixture {arg.arg}"
                    for arg in node.args.args
                    if arg.arg in stack_fixtures - own
                ]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).rpartition(".")[2] == "Stack":
            found.append(f"line {node.lineno}: builds a Stack")
    return found


def sys_path_edits(source: str) -> list[int]:
    """The lines that change sys.path by hand (sys.path.insert, append, extend, or sys.path = ...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "sys.path.insert",
            "sys.path.append",
            "sys.path.extend",
        ):
            found.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(ast.unparse(target) == "sys.path" for target in targets):
                found.append(node.lineno)
    return sorted(found)


def e2e_stack_fixtures() -> set[str]:
    return fixture_names((E2E / "conftest.py").read_text())


def test_no_test_file_name_exists_twice():
    counts = Counter(path.name for path in modules_under())
    assert [name for name, count in counts.items() if count > 1] == []


def test_the_tests_that_start_processes_are_in_e2e():
    stack_fixtures = e2e_stack_fixtures()
    found = [
        f"{path.relative_to(TESTS.parent)} {why}"
        for path in modules_under()
        if E2E not in path.parents
        for why in starts_processes(path.read_text(), stack_fixtures)
    ]
    assert found == []


def test_every_file_in_e2e_starts_processes():
    stack_fixtures = e2e_stack_fixtures()
    assert [path.name for path in modules_under(E2E) if not starts_processes(path.read_text(), stack_fixtures)] == []


def test_the_helpers_are_imported_as_a_package_not_through_sys_path():
    """tests/support is imported as tests.support by the tests, bench/ and docs/ (whose scripts run
    as modules from the repository's folder): none of them edits sys.path."""
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}"
        for folder in ("tests", "bench", "docs")
        for path in sorted((TESTS.parent / folder).rglob("*.py"))
        for line in sys_path_edits(path.read_text())
    ]
    assert found == []
    assert sys_path_edits("import sys\nsys.path.insert(0, str(REPO))") == [2]
    assert sys_path_edits("import sys\nsys.path += ['.']\nsys.path.append('x')") == [2, 3]


def test_the_stacks_are_e2e_fixtures():
    assert {"embedded_stack", "postgres_redis_stack", "stack", "client"} <= e2e_stack_fixtures()


@pytest.mark.parametrize(
    "source",
    [
        "import pytest\npytestmark = pytest.mark.e2e",
        "import pytest\npytestmark = [pytest.mark.slow, pytest.mark.compose]",
        "import pytest\n@pytest.mark.e2e\ndef test_x():\n    pass",
        "import pytest\nclass TestX:\n    @pytest.mark.e2e\n    def test_x(self):\n        pass",
        "def test_x(embedded_stack):\n    pass",
        "import pytest\n@pytest.fixture\ndef api(client):\n    return client",
        "from tests.support.servers import Stack\ndef test_x(tmp_path, data_dir):\n    with Stack(home=tmp_path, "
        "data_dir=data_dir) as stack:\n        pass",
    ],
)
def test_a_test_that_starts_processes_is_caught(source):
    assert starts_processes(source, {"embedded_stack", "stack", "client"}) != []


@pytest.mark.parametrize(
    "source",
    [
        "import pytest\npytestmark = pytest.mark.slow\ndef test_x(service_env, tmp_path):\n    pass",
        "import pytest\n@pytest.fixture\ndef client():\n    return 1\ndef test_x(client):\n    pass",
        "def helper(stack):\n    return stack\ndef test_x(data_dir):\n    assert helper([1])",
    ],
)
def test_a_fast_test_passes(source):
    assert starts_processes(source, {"embedded_stack", "stack", "client"}) == []
