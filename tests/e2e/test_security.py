"""Strangers are kept out when tokens are set, and fuzzed requests never break the API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest
import schemathesis
from fastapi import APIRouter
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from service.api.auth import parse_tokens
from service.api.routers import include_api
from tests.support.servers import REPO, Stack, wait_until

pytestmark = pytest.mark.e2e

RW, RO = "rw-token-for-tests", "ro-token-for-tests"
# Open: scrapers and orchestrators' probes send no token.
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}


@pytest.fixture(scope="module")
def locked_stack(tmp_path_factory, data_dir):
    with Stack(
        home=tmp_path_factory.mktemp("locked"),
        data_dir=data_dir,
        with_worker=False,
        extra_env={"TRAINYARD_API_TOKENS": f"{RW},{RO}:read"},
    ) as stack:
        yield stack


def _walk(router):
    for route in router.routes:
        if hasattr(route, "original_router"):  # an included router
            yield from _walk(route.original_router)
        elif hasattr(route, "methods"):
            yield route


def route_table() -> list[tuple[str, str]]:
    """Every (method, path) the API serves, with path parameters filled in."""
    routes, api = [], APIRouter()
    include_api(api, auth=True)
    for route in _walk(api):
        for method in sorted(route.methods - {"HEAD"}):
            routes.append((method, re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", route.path)))
    return routes


# The POSTs that change nothing, which a read-only token may call (a serving client holds one).
READING_POSTS = {
    "/v1/predict",
    "/v1/models/00000000-0000-0000-0000-000000000000/predict",
    "/v2/models/00000000-0000-0000-0000-000000000000/infer",
    "/v2/models/00000000-0000-0000-0000-000000000000/versions/00000000-0000-0000-0000-000000000000/infer",
}


def test_route_table_is_complete():
    paths = {path for _, path in route_table()}
    assert {"/v1/jobs", "/v1/predict", "/healthz"} | READING_POSTS <= paths


@pytest.mark.parametrize("method, path", route_table())
def test_every_route_needs_a_token(locked_stack, method, path):
    with httpx.Client(base_url=locked_stack.url, timeout=10) as client:
        anonymous = client.request(method, path)
        if path in OPEN_PATHS:
            assert anonymous.status_code == 200
            return
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.headers["www-authenticate"] == "Bearer"
        # The Open Inference Protocol's clients read `error`; the rest of the API says `detail`.
        assert set(anonymous.json()) == ({"error"} if path.startswith("/v2") else {"detail"}), anonymous.text
        wrong = client.request(method, path, headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401
        basic = client.request(method, path, headers={"Authorization": f"Basic {RW}"})
        assert basic.status_code == 401
        read_only = client.request(method, path, headers={"Authorization": f"Bearer {RO}"})
        if method == "GET" or path in READING_POSTS:
            assert read_only.status_code not in (401, 403), read_only.text
        else:
            assert read_only.status_code == 403 and "only read" in read_only.json()["detail"]
        full = client.request(method, path, headers={"Authorization": f"Bearer {RW}"})
        assert full.status_code not in (401, 403)
        if path.startswith("/v2"):
            unknown = client.get(path + "/no-such-route", headers={"Authorization": f"Bearer {RW}"})
            assert unknown.status_code == 404 and set(unknown.json()) == {"error"}, unknown.text
            other = client.request("DELETE", path, headers={"Authorization": f"Bearer {RW}"})
            assert other.status_code == 405 and set(other.json()) == {"error"}, other.text


def test_the_api_documentation_stays_open_and_offline(locked_stack):
    """As FastAPI's own pages were: /docs, /redoc and the schema need no token (they describe the
    API; every operation they show still does), and now load nothing from elsewhere."""
    from service.api.docs import ASSETS

    with httpx.Client(base_url=locked_stack.url, timeout=10) as client:
        for path in (
            "/docs",
            "/redoc",
            "/openapi.json",
            "/docs/oauth2-redirect",
            f"{ASSETS}/swagger-ui-bundle.js",
            f"{ASSETS}/swagger-ui.css",
            f"{ASSETS}/redoc.standalone.js",
            f"{ASSETS}/favicon.png",
        ):
            assert client.get(path).status_code == 200, path
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            assert f'src="{ASSETS}/' in html and not re.search(r"https?:|//[\w.-]+\.\w", html), html


def test_a_token_works_end_to_end(locked_stack):
    spec = {"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}, "epochs": 1}
    with httpx.Client(base_url=locked_stack.url, timeout=10) as client:
        created = client.post("/v1/jobs", json=spec, headers={"Authorization": f"Bearer {RW}"})
        assert created.status_code == 202
        job_id = created.json()["id"]
        assert client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {RO}"}).json()["id"] == job_id
    assert "API tokens are set" in locked_stack.log("api")


def test_the_cli_exits_4_when_refused(locked_stack):
    def trainyard(*args, token=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        env.update({"TRAINYARD_URL": locked_stack.url, **({"TRAINYARD_TOKEN": token} if token else {})})
        return subprocess.run(
            [sys.executable, "-m", "service.cli.main", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    anonymous = trainyard("jobs", "list", "--json")
    assert anonymous.returncode == 4 and anonymous.stderr.startswith("error: 401 ") and anonymous.stdout == ""
    assert trainyard("jobs", "list", "--json", token="wrong").returncode == 4
    assert trainyard("jobs", "cancel", "00000000-0000-0000-0000-000000000000", token=RO).returncode == 4
    assert json.loads(trainyard("jobs", "list", "--json", token=RO).stdout)["count"] >= 0


def test_without_tokens_the_api_says_it_is_open_on_loopback(embedded_stack):
    assert "authentication is off, so the API listens on 127.0.0.1 only" in embedded_stack.log("api")


def _start_api(tmp_path, data_dir, module: list[str], **env) -> subprocess.Popen:
    stack = Stack(home=tmp_path, data_dir=data_dir, with_worker=False, extra_env={"TRAINYARD_HOST": "0.0.0.0", **env})
    return subprocess.Popen(
        [sys.executable, "-m", *module],
        cwd=REPO,
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ), stack


@pytest.mark.parametrize(
    "module", [["service.cli.main", "api"], ["uvicorn", "service.api.app:app"]], ids=["trainyard api", "uvicorn"]
)
def test_exposed_without_tokens_the_api_refuses_to_start(tmp_path, data_dir, module):
    process, _ = _start_api(tmp_path, data_dir, module)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "refusing to listen on 0.0.0.0 without API tokens" in output and "TRAINYARD_ALLOW_OPEN=true" in output


def test_exposed_without_tokens_the_api_starts_when_told_it_is_intended(tmp_path, data_dir):
    process, stack = _start_api(tmp_path, data_dir, ["service.cli.main", "api"], TRAINYARD_ALLOW_OPEN="true")
    try:
        wait_until(
            lambda: httpx.get(f"{stack.url}/healthz", timeout=2).status_code == 200,
            timeout=60,
            what="the API to answer",
        )
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "TRAINYARD_ALLOW_OPEN=true lets anyone" in output


def test_token_parsing():
    table = parse_tokens(" a , b:read ,, ")
    assert table.enabled and table.lookup("a") == "rw" and table.lookup("b") == "ro"
    assert table.lookup("b:read") is None and table.lookup("c") is None
    assert not parse_tokens("").enabled


def fuzz_examples() -> int:
    """Examples per operation of the property-based tests below; TRAINYARD_FUZZ_EXAMPLES=200 (say)
    for a deeper run than the suite's."""
    return int(os.environ.get("TRAINYARD_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory, data_dir):
    """The API alone: fuzzed specs may ask for 10,000 epochs, which no worker should run."""
    with Stack(home=tmp_path_factory.mktemp("fuzz"), data_dir=data_dir, with_worker=False) as stack:
        yield stack


def test_fuzzed_requests_get_no_5xx_and_match_the_schema(fuzz_stack):
    """Property-based requests for every operation in the service's own OpenAPI schema."""
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=fuzz_examples(),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case):
            case.call_and_validate(
                base_url=fuzz_stack.url,
                checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
            )

        check()


# Every check but positive_data_acceptance (a schema cannot say that linear_regression does not fit
# mnist), every phase, bounded and seeded. A job's event stream stays open while the job lives, and
# no worker ends these jobs: it is left out here (tests/e2e/test_events_and_logs.py drives it).
SCHEMATHESIS_RUN = [
    "--checks",
    "all",
    "--exclude-checks",
    "positive_data_acceptance",
    "--phases",
    "examples,coverage,fuzzing,stateful",
    "--max-examples",
    str(fuzz_examples() // 2),
    "--seed",
    "1",
    "--workers",
    "1",
    "--generation-database",
    "none",
    "--exclude-path-regex",
    "/events$",
    "--no-color",
]


def test_schemathesis_finds_nothing(fuzz_stack, tmp_path):
    """What the OpenAPI document says is what the API does, for those who generate clients from it:
    statuses, headers, bodies, the methods each path takes, and what it refuses."""
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{fuzz_stack.url}/openapi.json", *SCHEMATHESIS_RUN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-30_000:] + run.stderr[-3_000:]


# CIFAR-10's python layout is a pickle: its reader subclasses pickle.Unpickler and admits only
# numpy arrays in find_class (a file that would run code is refused: tests/models/test_colour.py).
RESTRICTED_UNPICKLERS = {"models/data/cifar.py"}
# Pretrained weights are torchvision's .pth files: read with torch.load(weights_only=True), torch's
# own restricted unpickler (tensors and plain containers only), and nothing else.
WEIGHTS_ONLY_LOADERS = {"models/nets/pretrained.py"}


def test_no_code_path_unpickles():
    """Checkpoints and uploads are read with safetensors, PIL and numpy; nothing may unpickle
    but the one restricted unpickler, which must not call pickle's own loaders, and the pretrained
    weights reader, which only calls torch.load(weights_only=True)."""
    from tests.support.servers import REPO

    forbidden = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|\btorch\.load\(|allow_pickle\s*=\s*True")
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("models", "service", "workers")
        for path in (REPO / folder).rglob("*.py")
        if forbidden.search(path.read_text())
    ]
    assert set(offenders) <= RESTRICTED_UNPICKLERS | WEIGHTS_ONLY_LOADERS, offenders
    for name in RESTRICTED_UNPICKLERS:
        source = (REPO / name).read_text()
        assert "def find_class" in source and not re.search(r"\bpickle\.loads?\(|\btorch\.load\(", source)
    for name in WEIGHTS_ONLY_LOADERS:
        source = (REPO / name).read_text()
        calls = re.findall(r"\btorch\.load\(([^)]*)\)", source)
        assert calls and all("weights_only=True" in call for call in calls), calls
        assert not re.search(r"\bimport pickle\b|\bpickle\.loads?\(|allow_pickle", source)


BODY_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "multipart/form-data",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "image/png",
    "text/plain",
    "application/vnd.trainyard+weird",
]


# Bodies that broke error answers once, or nearly: undecodable bytes, lone surrogates, numbers
# JSON cannot hold, deep nesting, a truncated multipart body.
ALMOST_VALID = [
    b'{"model": {"arch": "\xe9\xdf"}}',
    b'{"name": "\\udc80"}',
    b"\xe9\xdf\xfe\x0f\xc3;",
    b'{"epochs": 1e400}',
    b'{"": -1e400, "model": "x"}',
    b"[" * 2000,
    b'{"a": ' * 500,
    b"--x\r\n\r\n--x--",
]


def _hostile_bodies():
    """Binary, non-UTF-8 and almost-valid bodies: the schema-driven fuzzing above sends only text."""
    from hypothesis import strategies as st

    return st.one_of(
        st.binary(max_size=2048), st.sampled_from(ALMOST_VALID), st.text(max_size=256).map(lambda t: t.encode("utf-16"))
    )


def test_binary_and_undecodable_bodies_get_no_5xx_anywhere(fuzz_stack):
    """Every operation, any body under any content type: a 4xx (or a success), never a 5xx."""
    from hypothesis import strategies as st

    with httpx.Client(base_url=fuzz_stack.url, timeout=30) as client:
        for method, path in route_table():
            for body in ALMOST_VALID:  # each known trap, on every operation, not left to chance
                for content_type in ("application/json", "multipart/form-data; boundary=x"):
                    answer = client.request(method, path, content=body, headers={"Content-Type": content_type})
                    assert answer.status_code < 500, (method, path, content_type, body[:64], answer.text[:300])

            @given(body=_hostile_bodies(), content_type=st.sampled_from(BODY_TYPES))
            @settings(
                max_examples=fuzz_examples() // 2,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            # Called at once, within this iteration: the loop's method and path are the ones meant.
            def check(body, content_type):
                answer = client.request(method, path, content=body, headers={"Content-Type": content_type})  # noqa: B023
                assert answer.status_code < 500, (method, path, content_type, body[:64], answer.text[:300])  # noqa: B023
                if answer.status_code == 422:
                    answer.json()  # a readable error, whatever came in

            check()
