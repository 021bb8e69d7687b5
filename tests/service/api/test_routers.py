"""Each router's status codes, error shapes and auth, through the real app in this process: SQLite
(PostgreSQL too where locking matters) and the embedded broker of a private home (a submitted job's
message waits in its table; no worker runs), and small real checkpoints written to disk."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import torch
from safetensors.torch import save
from sqlalchemy import select

from service.core import db, jobs, worker_registry
from service.core.storage import get_storage
from service.core.tables import Job
from tests.support.api import make_api
from tests.support.datagen import idx_files, image_folder_zip, png_bytes, zip_bytes
from tests.support.specs import SOFTMAX_SPEC

REGRESSION_SPEC = {"model": {"arch": "linear_regression"}, "data": {"dataset": "synthetic-linear"}, "epochs": 1}
TOKENS = {"write": "rw-0123456789abcdef", "read": "ro-0123456789abcdef"}


@pytest.fixture
def api(service_env):
    return make_api()


@pytest.fixture
def guarded(service_env, monkeypatch):
    """The app with a read-write and a read-only token set."""
    from service.api.auth import token_table
    from service.core.settings import get_settings

    monkeypatch.setenv("TRAINYARD_API_TOKENS", f"{TOKENS['write']},{TOKENS['read']}:read")
    get_settings.cache_clear()
    token_table.cache_clear()
    yield make_api()
    get_settings.cache_clear()
    token_table.cache_clear()


def bearer(kind: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[kind]}"}


def locs(answer) -> list[list]:
    assert answer.status_code == 422, answer.text
    return [e["loc"] for e in answer.json()["detail"]]


def submitted(api, spec: dict | None = None, **headers) -> dict:
    answer = api.post("/v1/jobs", json=spec or SOFTMAX_SPEC, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/v1/jobs/{answer.json()['id']}"
    return answer.json()


def image(label: int = 3) -> list:
    return [("files", ("x.png", png_bytes(label, seed=1), "image/png"))]


# --- auth -------------------------------------------------------------------------------------------


def test_tokens_guard_v1_but_not_health(guarded):
    missing = guarded.get("/v1/jobs")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json() == {"detail": "missing bearer token"}
    assert guarded.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).json() == {"detail": "invalid token"}
    assert guarded.get("/v1/models", headers={"Authorization": f"Basic {TOKENS['write']}"}).status_code == 401
    assert guarded.get("/healthz").status_code == 200 and "checks" in guarded.get("/readyz").json()


def test_a_read_token_reads_and_may_not_write(guarded):
    assert guarded.get("/v1/jobs", headers=bearer("read")).json() == {"data": [], "count": 0}
    refused = guarded.post("/v1/jobs", json=SOFTMAX_SPEC, headers=bearer("read"))
    assert refused.status_code == 403 and refused.json() == {"detail": "this token may only read"}
    assert guarded.delete("/v1/datasets/abcdef", headers=bearer("read")).status_code == 403
    assert guarded.post("/v1/jobs", json=SOFTMAX_SPEC, headers=bearer("write")).status_code == 202
    assert guarded.get("/v1/jobs", headers=bearer("read")).json()["count"] == 1


def first_answer(app, method: str, path: str, headers: dict) -> tuple[int, bool]:
    """The status the ASGI app answers a request with a small multipart body, and whether it read
    the body to answer it."""
    read, sent = [], []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": b"--x--\r\n", "more_body": False}

    async def send(message):
        sent.append(message)

    headers = {"content-type": "multipart/form-data; boundary=x", "content-length": "7", **headers}
    scope = {
        **{"type": "http", "http_version": "1.1", "scheme": "http", "root_path": "", "query_string": b""},
        **{"server": ("testserver", 80), "client": ("testclient", 50000), "method": method, "path": path},
        "raw_path": path.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], bool(read)


def test_an_upload_refused_by_its_token_or_the_store_is_refused_before_its_body_is_sent(guarded):
    """FastAPI reads a form before it runs the route's dependencies: an upload of gigabytes that its
    token, its page session or a store that is not the service's refuses was received whole first."""

    class Elsewhere:
        def problem(self, store):
            return "this API's store is not the service's"

    app = guarded.app
    assert first_answer(app, "POST", "/v1/datasets", {}) == (401, False)
    assert first_answer(app, "POST", "/v1/models/import", bearer("read")) == (403, False)
    assert first_answer(app, "POST", "/ui/datasets", {}) == (303, False)  # to the login form
    status, read = first_answer(app, "POST", "/v1/datasets", bearer("write"))
    assert status == 422 and read  # let in: the form is read, and this one has no file
    app.state.store_readiness = Elsewhere()
    assert first_answer(app, "POST", "/v1/datasets", bearer("write")) == (503, False)
    assert first_answer(app, "POST", "/v1/models/import", bearer("write")) == (503, False)


def test_a_dashboard_form_reads_its_page_session_once(guarded, monkeypatch):
    from service.core import sessions

    assert guarded.post("/ui/login", data={"token": TOKENS["write"]}, follow_redirects=False).status_code == 303
    reads = []
    signed_out = sessions.signed_out
    monkeypatch.setattr(sessions, "signed_out", lambda db, **kw: reads.append(kw) or signed_out(db, **kw))
    sent = guarded.post("/ui/submit", data={"spec": json.dumps(SOFTMAX_SPEC)}, follow_redirects=False)
    assert sent.status_code == 303 and len(reads) == 1  # the guard before the body; the dependency took its word


def test_the_dashboard_signs_in_with_a_session_that_is_not_the_token(guarded):
    from service.api.auth import COOKIE, SESSION_SECONDS, parse_tokens, session_cookie

    asked = guarded.get("/ui/models?sort=name", follow_redirects=False)
    assert asked.status_code == 303 and asked.headers["location"] == "/ui/login?next=%2Fui%2Fmodels%3Fsort%3Dname"
    assert asked.content == b"" and "content-type" not in asked.headers
    assert guarded.get("/ui/fragments/jobs", follow_redirects=False).headers["location"] == "/ui/login"
    wrong = guarded.post("/ui/login", data={"token": "nope", "next": "/ui/models"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not one of this service&#39;s API tokens" in wrong.text
    assert 'name="next" value="/ui/models"' in wrong.text and COOKIE not in wrong.cookies
    empty = guarded.post("/ui/login", data={"token": " "}, follow_redirects=False)
    assert empty.status_code == 400 and "enter an API token" in empty.text
    signed = guarded.post("/ui/login", data={"token": TOKENS["read"], "next": "/ui/models"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/models"
    session = signed.cookies[COOKIE]
    assert TOKENS["read"] not in session and "HttpOnly" in signed.headers["set-cookie"]
    assert f"Max-Age={SESSION_SECONDS}" in signed.headers["set-cookie"]
    page = guarded.get("/ui/models")  # the client keeps the cookie, as a browser does
    assert page.status_code == 200 and 'id="sign-out"' in page.text
    refused = guarded.post("/ui/submit", data={"spec": "{}"}, follow_redirects=False)
    assert refused.status_code == 403 and "text/html" in refused.headers["content-type"]  # a read-only session
    assert "may only read" in refused.text and "sign in with a read-write token" in refused.text
    assert '<body class="read-only">' in page.text and 'id="read-only"' in page.text
    for part in ('name="files"; filename=""\r\nContent-Type: application/octet-stream', 'name="files"'):
        nothing = (  # a browser's form with no file chosen; a script's with an empty field
            f'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nx\r\n'
            f"--b\r\nContent-Disposition: form-data; {part}\r\n\r\n\r\n--b--\r\n"
        )
        chosen = guarded.post(
            "/ui/predict", content=nothing.encode(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert chosen.status_code == 422 and "choose one or more images" in chosen.text, chosen.text
    for stale in (
        TOKENS["read"],
        session_cookie(TOKENS["read"], now=0),
        "9999999999.00",
        "",
        " 99999999999.00",
        "9" * 5000 + ".00",
    ):
        guarded.cookies.set(COOKIE, stale)
        ended = guarded.get("/", follow_redirects=False)
        assert ended.status_code == 303 and ended.headers["location"].endswith("&ended=1") == bool(stale), stale
    assert parse_tokens(TOKENS["write"]).session(session) is None  # a token taken away ends its sessions
    elsewhere = guarded.post(
        "/ui/login", data={"token": TOKENS["write"], "next": "//evil.example/"}, follow_redirects=False
    )
    assert elsewhere.headers["location"] == "/"
    for sneaky in ("/\t/evil.example", "/\r\nSet-Cookie: x=1", "/\\evil.example"):
        refused = guarded.post("/ui/login", data={"token": TOKENS["write"], "next": sneaky}, follow_redirects=False)
        assert refused.headers["location"] == "/", sneaky
    writer = elsewhere.cookies[COOKIE]
    guarded.cookies.clear()
    guarded.cookies.set(COOKIE, writer)
    assert guarded.get("/", follow_redirects=False).status_code == 200
    guarded.cookies.clear()
    assert "set-cookie" not in guarded.post("/ui/logout", follow_redirects=False).headers  # no session: nothing cleared
    guarded.cookies.set(COOKIE, writer)
    out = guarded.post("/ui/logout", follow_redirects=False)
    assert out.headers["location"] == "/ui/login" and 'trainyard_session=""' in out.headers["set-cookie"]
    guarded.cookies.set(COOKIE, writer)  # a copy of the signed-out cookie
    assert guarded.get("/", follow_redirects=False).status_code == 303
    guarded.cookies.set(COOKIE, session)  # the read-only session was not signed out
    assert guarded.get("/", follow_redirects=False).status_code == 200
    assert guarded.get("/ui/login?next=/ui/models", follow_redirects=False).headers["location"] == "/ui/models"
    assert guarded.get("/ui/logout", follow_redirects=False).headers["location"] == "/ui/login"  # typed in
    assert "your session has ended" in guarded.get("/ui/login?next=/&ended=1").text
    assert guarded.get("/", follow_redirects=False).status_code == 303


def test_the_submit_form_tells_mistakes_as_the_api_does(api):
    for spec, said in (
        ({**SOFTMAX_SPEC, "model": {"arch": "mpl"}}, "did you mean mlp?"),
        ({**SOFTMAX_SPEC, "optimizer": {"learning_rate": 0.1}}, "did you mean &#39;lr&#39;?"),
        ({**SOFTMAX_SPEC, "model": {"architecture": "mlp"}}, "model.arch is required (not &#39;architecture&#39;)"),
    ):
        page = api.post("/ui/submit", data={"spec": json.dumps(spec)})
        assert page.status_code == 422 and said in page.text, page.text[-1500:]
        api_said = api.post("/v1/jobs", json=spec).json()["detail"][0]["msg"]
        assert said.replace("&#39;", "'") in api_said


def test_the_submit_form_starts_on_an_example_this_service_can_train(api):
    """Synthetic data on a fresh service (the course's examples want Fashion-MNIST's files); the
    README quickstart's spec once its dataset is uploaded."""
    from service.core import db
    from service.core.tables import DatasetStatus, StoredDataset

    assert '<option value="linear-regression" selected>' in api.get("/ui/submit").text
    with db.session_scope() as session:
        session.add(StoredDataset(name="shapes", status=DatasetStatus.READY, size_bytes=1))
    assert '<option value="quickstart" selected>' in api.get("/ui/submit").text
    assert '<option value="mlp" selected>' in api.get("/ui/submit?example=mlp").text


def test_the_submit_form_offers_and_sends_sweeps_too(api):
    form = api.get("/ui/submit?example=sweeps/polynomial-degree").text
    assert '<option value="sweeps/polynomial-degree" selected>' in form and "&#34;base&#34;" in form
    assert "there is no example" in api.get("/ui/submit?example=sweeps/../../pyproject").text
    sweep = {"name": "form-sweep", "base": {**SOFTMAX_SPEC, "epochs": 1}, "grid": {"optimizer.lr": [0.1, 0.2]}}
    sent = api.post("/ui/submit", data={"spec": json.dumps(sweep)}, follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"].startswith("/ui/sweeps/"), sent.text
    sweep_id = sent.headers["location"].rsplit("/", 1)[-1]
    assert len(api.get(f"/v1/sweeps/{sweep_id}").json()["jobs"]) == 2
    assert 'id="warnings"' not in api.get(f"/ui/sweeps/{sweep_id}").text
    unused = {**sweep, "base": {**sweep["base"], "model": {"arch": "mlp", "init_std": 0.5}}}  # without init: normal
    warned = api.post("/ui/submit", data={"spec": json.dumps(unused)}).text  # its page says what the API would
    assert 'id="warnings"' in warned and "init_std" in warned.split('id="warnings"')[1].split("</div>")[0]
    wrong = api.post("/ui/submit", data={"spec": json.dumps({**sweep, "grid": {"optimizer.lrr": [0.1]}})})
    assert wrong.status_code == 422 and "optimizer.lrr" in wrong.text, wrong.text[-1500:]
    assert '<option value="" selected>(the spec sent)</option>' in wrong.text  # not an example it is not
    empty = api.post("/ui/submit", data={"spec": ""})
    assert empty.status_code == 422 and "the spec is empty" in empty.text
    assert empty.headers["content-type"].startswith("text/html")  # the form again, not FastAPI's JSON


def test_a_cancelled_sweep_is_resumed_from_the_api_and_its_page(api):
    from service.core.tables import Sweep

    sweep = {"name": "resumed", "base": {**SOFTMAX_SPEC, "epochs": 1}, "grid": {"optimizer.lr": [0.1, 0.2, 0.3]}}
    created = api.post("/v1/sweeps", json={**sweep, "max_parallel": 1}).json()
    assert api.post(f"/v1/sweeps/{created['id']}/resume").status_code == 409  # still running
    assert api.post(f"/v1/sweeps/{created['id']}/cancel").json()["status"] == "cancelled"
    page = api.get(f"/ui/sweeps/{created['id']}").text
    assert f'action="/ui/sweeps/{created["id"]}/resume"' in page and 'id="cancel"' not in page
    resumed = api.post(f"/v1/sweeps/{created['id'][:8]}/resume")
    assert resumed.status_code == 202 and resumed.json()["status"] == "running", resumed.text
    assert [j["status"] for j in sorted(resumed.json()["jobs"], key=lambda j: j["trial"])] == [
        "queued",
        "pending",
        "pending",
    ]
    again = api.post(f"/v1/sweeps/{created['id']}/resume")
    assert again.status_code == 409 and "is still running" in again.text
    assert api.post(f"/v1/sweeps/{created['id']}/cancel").status_code == 202
    back = api.post(f"/ui/sweeps/{created['id']}/resume", follow_redirects=False)  # the page's button
    assert back.status_code == 303 and api.get(f"/v1/sweeps/{created['id']}").json()["status"] == "running"
    with db.session_scope() as session:  # every trial succeeded, then the sweep was cancelled: nothing to resume
        for job_id in [j["job_id"] for j in api.get(f"/v1/sweeps/{created['id']}").json()["jobs"] if j["job_id"]]:
            session.get(Job, job_id).status = "succeeded"
        session.get(Sweep, created["id"]).launched = 3
    assert api.post(f"/v1/sweeps/{created['id']}/cancel").status_code == 202
    page = api.get(f"/ui/sweeps/{created['id']}").text
    assert 'id="resume"' not in page and api.post(f"/v1/sweeps/{created['id']}/resume").status_code == 409


def test_without_tokens_the_login_form_leads_on(api):
    assert api.get("/ui/login?next=/ui/models", follow_redirects=False).headers["location"] == "/ui/models"
    assert 'id="sign-out"' not in api.get("/ui/models").text


# --- health -------------------------------------------------------------------------------------------


def test_a_database_not_migrated_to_this_version_is_not_ready_and_says_to_migrate(service_env_on):
    """A forgotten `trainyard migrate` (an upgrade, a new database): /readyz said ready and each
    request failed, a 500 on PostgreSQL, a 503 'unavailable' on SQLite."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from service.core import db
    from service.core.migrate import alembic_config, head_revision, schema_problem

    api = make_api()
    api.app.state.preload.board.report("ok")
    assert schema_problem() is None and api.get("/readyz").status_code == 200
    with db.get_engine().begin() as conn:  # a newer version migrated it (an upgrade under way): still ready
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    assert schema_problem() is None and api.get("/readyz").status_code == 200
    older = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision()).down_revision
    with db.get_engine().begin() as conn:
        conn.execute(text("DROP TABLE evaluation_reports"))  # a table the newest revision added, say
        conn.execute(text(f"UPDATE alembic_version SET version_num = '{older}'"))
    ready = api.get("/readyz")
    said = (
        "error: the database's schema is not this version's: run `trainyard migrate` "
        f"(it is at revision {older}, this version's is {head_revision()})"
    )
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == said, ready.json()
    assert api.get("/v2/health/ready").json() == {"ready": False, "error": said.removeprefix("error: ")}
    with db.get_engine().begin() as conn:
        conn.execute(text("DROP TABLE jobs CASCADE" if conn.dialect.name == "postgresql" else "DROP TABLE jobs"))
        conn.execute(text("DROP TABLE alembic_version"))
    assert "(it is at revision none, " in api.get("/readyz").json()["checks"]["database"]
    listed = api.get("/v1/jobs")
    assert listed.status_code == 503 and listed.headers["retry-after"], listed.text
    assert listed.json()["detail"] == (
        "the database's schema is not this version's: run `trainyard migrate` (GET /readyz says more)"
    )


def test_health_and_readiness(api):
    health = api.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    loading = api.get("/readyz")  # the lifespan, which preloads models, has not run
    assert loading.status_code == 503 and loading.json()["status"] == "not ready"
    assert loading.json()["checks"]["database"] == "ok" and loading.json()["checks"]["broker"] == "ok"
    assert loading.json()["checks"]["models"].startswith("loading")
    api.app.state.preload.board.report("ok")
    assert api.get("/readyz").status_code == 200
    assert api.get("/metrics").headers["content-type"].startswith("text/plain")


def test_an_api_whose_store_is_not_the_services_is_not_ready(api, monkeypatch, trained_job):
    """It reads old files or none, its uploads would go where no worker reads: /readyz says why,
    /v2 too, and uploads are refused; a store that cannot be asked now counts neither way."""
    from service.core.storage import StorageUnavailable
    from service.core.storage.check import StoreReadiness, leave_mark, mark_keys

    api.app.state.preload.board.report("ok")
    api.app.state.store_readiness = StoreReadiness(ttl=0)  # asked afresh at each probe
    token = leave_mark(get_storage().store)
    assert api.get("/readyz").json()["checks"]["store"] == "ok"
    uploaded = api.post("/v1/datasets", files={"file": ("set.zip", image_folder_zip(["a", "b"]), "application/zip")})
    assert uploaded.status_code == 201, uploaded.text
    get_storage().store.delete(mark_keys(token)[:1])  # an expiry rule on one area: the upload says it is the store
    assert api.get("/readyz").status_code == 200
    get_storage().store.delete(mark_keys(token))  # and on every area: a store with no mark is another one
    answer = api.get("/readyz")
    assert answer.status_code == 503, answer.json()
    assert answer.json()["checks"]["store"].startswith(f"error: this API's store ({get_storage().url}) lacks the mark")
    ready = api.get("/v2/health/ready")
    assert ready.status_code == 503 and "lacks the mark" in ready.json()["error"]
    assert api.get("/v1/workers").json()["store_problem"].startswith(f"this API's store ({get_storage().url}) lacks")
    again = api.post("/v1/datasets", files={"file": ("set.zip", image_folder_zip(["a", "c"]), "application/zip")})
    assert again.status_code == 503 and again.json()["detail"].endswith("; nothing was written"), again.text
    assert again.json()["detail"].startswith("this API's store (") and "Retry-After" in again.headers
    kept = api.delete(f"/v1/jobs/{trained_job}")  # its files in the service's store would stay, unrecorded
    assert kept.status_code == 503 and kept.json()["detail"].endswith("; nothing was deleted"), kept.text
    assert api.get(f"/v1/jobs/{trained_job}").status_code == 200
    get_storage().store.delete([key for key, _ in get_storage().store.list(f"checkpoints/{trained_job}/")])
    missing = api.post("/v1/predict", data={"model": f"job:{trained_job}"}, files=image())
    assert missing.status_code == 503 and "is missing" in missing.json()["detail"], missing.text
    assert ": this API's store (" in missing.json()["detail"]  # not the file's fault: the store is not the service's

    def unreachable(_prefix):
        raise StorageUnavailable("the store cannot be reached")

    monkeypatch.setattr(get_storage().store, "list", unreachable)
    answer = api.get("/readyz")
    assert answer.status_code == 200, answer.json()
    assert answer.json()["checks"]["store"] == "unchecked: StorageUnavailable: the store cannot be reached"


# --- jobs ---------------------------------------------------------------------------------------------


def test_submit_is_202_with_location_and_the_job_queued(api):
    job = submitted(api)
    assert job["status"] == "queued" and job["spec"]["epochs"] == SOFTMAX_SPEC["epochs"]
    assert api.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    again = api.post("/v1/jobs", json=SOFTMAX_SPEC, headers={"Idempotency-Key": "k1"})
    replay = api.post("/v1/jobs", json=SOFTMAX_SPEC, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == again.json()["id"]
    other = api.post("/v1/jobs", json={**SOFTMAX_SPEC, "epochs": 1}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409


@pytest.mark.parametrize("key", ["", " k1", "k1 ", "clé".encode(), "x" * 201])
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/sweeps"])
def test_an_idempotency_key_is_printable_ascii_as_the_cli_says(api, path, key):
    body = SOFTMAX_SPEC if path == "/v1/jobs" else {"base": SOFTMAX_SPEC, "grid": {"epochs": [1, 2]}}
    refused = api.post(path, json=body, headers={"Idempotency-Key": key})
    assert refused.status_code == 422 and locs(refused) == [["header", "idempotency-key"]], refused.text
    assert "printable ASCII" in refused.json()["detail"][0]["msg"]
    assert api.get("/v1/jobs").json()["count"] == 0


def test_submit_refuses_bad_specs_with_body_locations(api):
    assert locs(api.post("/v1/jobs", json={**SOFTMAX_SPEC, "epochs": 0})) == [["body", "epochs"]]
    assert locs(api.post("/v1/jobs", json={**SOFTMAX_SPEC, "data": {"dataset": "nope"}})) == [
        ["body", "data", "dataset"]
    ]
    assert ["body", "lr"] in locs(api.post("/v1/jobs", json={**SOFTMAX_SPEC, "lr": 0.1}))
    assert api.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}).status_code == 422
    assert api.get("/v1/jobs").json()["count"] == 0


def test_a_refusal_reads_plainly_and_shows_a_wrong_value(api):
    def messages(body: dict) -> list[str]:
        answer = api.post("/v1/jobs", json=body)
        assert answer.status_code == 422, answer.text
        return [e["msg"] for e in answer.json()["detail"]]

    uneven = messages({**SOFTMAX_SPEC, "batch_size": 30, "distributed": {"nproc_per_node": 4}})
    assert uneven[0].startswith("batch_size 30 is the global batch"), uneven  # no "Value error, "
    assert uneven[0].endswith("multiple of 4, or change nproc_per_node"), uneven
    machines = messages({**SOFTMAX_SPEC, "batch_size": 16, "distributed": {"nproc_per_node": 1, "nnodes": 3}})
    assert machines[0].endswith("multiple of 3, or change nproc_per_node or nnodes"), machines
    assert messages({**SOFTMAX_SPEC, "epochs": "ten"}) == ["Input should be a valid integer; got 'ten'"]
    assert messages({**SOFTMAX_SPEC, "batch_size": True}) == ["Input should be a valid integer; got true"]


def test_a_problem_found_against_the_data_shows_the_value_it_is_about(api):
    """Refusals checked against the dataset (after the spec's own validation) gave "input": null."""
    cosine = {**SOFTMAX_SPEC, "schedule": {"name": "cosine", "min_lr": 0.9}}
    (refused,) = api.post("/v1/jobs", json=cosine).json()["detail"]
    assert (refused["loc"], refused["input"]) == (["body", "schedule", "min_lr"], 0.9), refused
    (missing,) = api.post("/v1/jobs", json={**SOFTMAX_SPEC, "data": {"dataset": "uploaded:nothing"}}).json()["detail"]
    assert (missing["loc"], missing["input"]) == (["body", "data", "dataset"], "uploaded:nothing"), missing


def test_a_job_page_shows_the_metric_columns_its_epochs_have(api, trained_job):
    import re

    from service.core import db
    from service.core.tables import EpochMetric

    with db.session_scope() as session:  # as a regression records them: no accuracy, no validation
        for metric in session.query(EpochMetric).filter_by(job_id=trained_job):
            metric.train_acc = metric.test_acc = metric.val_loss = metric.val_acc = None
    header = re.search(r'<table id="metrics">\s*<thead>(.*?)</thead>', api.get(f"/ui/jobs/{trained_job}").text).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["epoch", "train loss", "test loss", "samples/s"]
    stored = re.search(r"· ([0-9.]+ [KMG]i?B) stored", api.get(f"/ui/jobs/{trained_job}").text)
    assert stored and not stored[1].startswith("0.0 "), stored  # its three small checkpoints: KiB, not "0.0 MB"
    with db.session_scope() as session:
        session.get(Job, trained_job).name = "Lr Sweep [lr=0.1]"  # a sweep trial's name
    assert 'id="register-name" value="lr-sweep-lr-0.1"' in api.get(f"/ui/jobs/{trained_job}").text


def test_a_k_fold_jobs_page_and_cli_show_each_fold_and_their_mean(api, trained_job):
    from service.cli.client import cross_validation_lines
    from service.core import db

    folds = [{"fold": i, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6 + i / 10, "val_acc": 0.7} for i in (1, 2)]
    summary = {"val_loss": {"mean": 0.75, "std": 0.05}, "val_acc": {"mean": 0.7, "std": 0.0}}
    with db.session_scope() as session:
        session.get(Job, trained_job).cross_validation = {"folds": folds, "summary": summary, "complete": False}
    page = api.get(f"/ui/jobs/{trained_job}").text
    table = page.split('<table id="folds">')[1].split("</table>")[0]
    assert "<th>val loss</th><th>val acc</th>" in table and "<td>0.8000</td>" in table and "2 folds so far" in page
    assert "<th>0.7500 ± 0.0500</th>" in table
    said = cross_validation_lines(api.get(f"/v1/jobs/{trained_job}").json()["cross_validation"])
    assert said[0] == "cross-validation (2 done so far): val loss 0.7500 ± 0.0500, val acc 0.700 ± 0.000", said
    assert said[2] == "  fold 2: train loss 0.5000, train acc 0.800, val loss 0.8000, val acc 0.700", said


def test_a_jobs_picture_draws_the_epochs_and_best_its_page_named(api, trained_job):
    """A running job's picture is fetched after its page: it drew an epoch the page had not listed
    and named a best epoch the page did not."""
    from service.api import plots
    from service.core import db

    page = api.get(f"/ui/jobs/{trained_job}").text
    assert f'src="/ui/jobs/{trained_job}/plot.png?epochs=3&amp;best=2"' in page
    with db.session_scope() as session:
        [(_, rows, best)] = plots.job_series_as_shown(session, trained_job, 2, 1)
        assert [row["epoch"] for row in rows] == [1, 2] and best == 1
        assert plots.job_series_as_shown(session, trained_job, 1, 2)[0][2] is None  # not drawn: not marked
    picture = api.get(f"/ui/jobs/{trained_job}/plot.png", params={"epochs": 2, "best": 1})
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert api.get(f"/ui/jobs/{trained_job}/plot.png", params={"epochs": -1}).status_code == 422


def test_a_long_jobs_page_lists_some_of_its_epochs_the_best_among_them_and_all_on_request(api, trained_job):
    import re

    from service.api.routers.dashboard import EPOCH_ROWS_SHOWN
    from service.core import db
    from service.core.tables import EpochMetric

    with db.session_scope() as session:  # 200 epochs past the 3 with checkpoints: the best stays epoch 2
        session.add_all(EpochMetric(job_id=trained_job, epoch=e, train_loss=1.0 / e) for e in range(4, 204))

    def epochs(page: str) -> list[int]:
        table = page.split('<table id="metrics">')[1].split("</table>")[0]
        return [int(e) for e in re.findall(r"<tr[^>]*><td>(\d+)", table)]

    page = api.get(f"/ui/jobs/{trained_job}").text
    listed = epochs(page)
    assert len(listed) <= EPOCH_ROWS_SHOWN + 2 and {1, 2, 203} <= set(listed) and listed == sorted(listed)
    assert f"{len(listed)} of 203 epochs listed" in page and 'href="?tab=overview&amp;epochs=all"' in page
    every = api.get(f"/ui/jobs/{trained_job}?epochs=all").text
    assert epochs(every) == list(range(1, 204)) and "epochs listed" not in every


def test_the_dashboard_compares_jobs_by_their_curves_and_what_their_specs_differ_in(api, trained_job):
    queued = submitted(api, {**SOFTMAX_SPEC, "name": "other", "epochs": 7})["id"]
    assert 'class="pick" name="jobs" value="' + queued + '"' in api.get("/").text
    page = api.get(f"/ui/compare?jobs={queued}&jobs={trained_job[:8]}")
    assert page.status_code == 200, page.text
    # In the order submitted, whatever the order given: a job's colour is the same on every plot.
    assert f'src="/ui/compare.png?jobs={trained_job}&amp;jobs={queued}"' in page.text
    header = re.search(r'<table id="compared">\s*<thead>(.*?)</thead>', page.text, re.S).group(1)
    assert '<th title="the specs differ here">epochs</th>' in header and ">name<" not in header
    keys = re.findall(
        r'<tr data-job="([^"]+)">\s*<td><span class="swatch" style="background: (#[0-9a-f]{6})', page.text
    )
    assert keys == [(trained_job, "#1f77b4"), (queued, "#ff7f0e")]  # each row's colour is its lines' (tab:blue, ...)
    picture = api.get(f"/ui/compare.png?jobs={trained_job},{queued}")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    one = api.get(f"/ui/compare?jobs={queued}")
    assert one.status_code == 422 and "give 2 to 8 job ids" in one.text and "1 given" in one.text
    unknown = api.get(f"/ui/compare?jobs={queued}&jobs=0123456789ab")
    assert unknown.status_code == 404 and "0123456789ab" in unknown.text


def test_jobs_are_listed_newest_first_paged_and_filtered(api, trained_job):
    queued = [submitted(api, {**SOFTMAX_SPEC, "name": f"j{i}"})["id"] for i in range(3)]
    everything = api.get("/v1/jobs").json()
    assert everything["count"] == 4 and [j["id"] for j in everything["data"]][:3] == queued[::-1]
    page = api.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 4 and [j["id"] for j in page["data"]] == [queued[1], queued[0]]
    assert [j["id"] for j in api.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]] == [trained_job]
    assert api.get("/v1/jobs", params={"status": "queued"}).json()["count"] == 3
    both = api.get("/v1/jobs", params=[("status", "succeeded"), ("status", "queued")]).json()
    assert both["count"] == 4  # several statuses at once: each counts
    done = api.get("/v1/jobs", params=[("status", "queued"), ("status", "done")])
    assert locs(done) == [["query", "status", 1]]  # the second one given
    assert done.json()["detail"][0]["msg"] == (
        "should be one of queued, running, succeeded, failed, cancelling, cancelled, pruned; got 'done'"
    )
    assert locs(api.get("/v1/jobs", params={"limit": 0})) == [["query", "limit"]]
    assert locs(api.get("/v1/jobs", params={"offset": -1})) == [["query", "offset"]]


def test_an_unknown_job_is_a_404_on_every_route(api):
    missing = "00000000-0000-4000-8000-000000000000"
    for path in ("", "/metrics", "/logs", "/evaluation"):
        answer = api.get(f"/v1/jobs/{missing}{path}")
        assert answer.status_code == 404 and isinstance(answer.json()["detail"], str), path
    assert api.post(f"/v1/jobs/{missing}/cancel").status_code == 404
    assert api.delete(f"/v1/jobs/{missing}").status_code == 404


def test_a_running_job_whose_worker_is_silent_says_since_when_and_until_when(api):
    """A killed worker's job said `running` unchanged until the reaper took it a lease later."""
    from datetime import timedelta

    from sqlalchemy import update

    from service.core.tables import utcnow

    job_id = submitted(api)["id"]
    with db.session_scope() as session:
        jobs.claim_job(session, job_id=job_id, worker="w7@host", lease_seconds=30, max_attempts=3)
    assert api.get(f"/v1/jobs/{job_id}").json()["waiting_reason"] is None  # it beat just now
    last = utcnow() - timedelta(seconds=12)
    with db.session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=last))
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["waiting_reason"]) == ("running", "worker_silent"), job
    assert job["waiting_detail"].startswith(f"its worker (w7@host) has not been heard from since {last:%H:%M:%S} UTC")
    assert "if it stays silent for a lease (30 s, TRAINYARD_LEASE_SECONDS), the job is taken" in job["waiting_detail"]
    listed = api.get("/v1/jobs").json()["data"][0]
    assert listed["waiting_reason"] == "worker_silent"
    assert "waiting: worker_silent (its worker (w7@host)" in api.get(f"/ui/jobs/{job_id}").text


def test_cancel_is_202_for_a_queued_job_and_409_for_a_finished_one(api, trained_job):
    job = submitted(api)
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    finished = api.post(f"/v1/jobs/{trained_job}/cancel")
    assert finished.status_code == 409 and "succeeded" in finished.json()["detail"]
    assert api.delete(f"/v1/jobs/{submitted(api)['id']}").status_code == 409  # queued: cancel it first


def test_the_dashboard_cancels_and_resumes_a_job_and_says_what_is_not_found(api):
    job_id = submitted(api)["id"]
    page = api.get(f"/ui/jobs/{job_id}")
    assert 'id="cancel"' in page.text and 'id="resume"' not in page.text
    cancelled = api.post(f"/ui/jobs/{job_id}/cancel", follow_redirects=False)
    assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/ui/jobs/{job_id}"
    page = api.get(f"/ui/jobs/{job_id}")
    assert 'id="resume"' in page.text and 'id="cancel"' not in page.text
    assert api.post(f"/ui/jobs/{job_id}/resume", follow_redirects=False).status_code == 303
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    missing = api.get("/ui/jobs/0123456789")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "job 0123456789 not found" in missing.text and 'href="/"' in missing.text
    assert api.get("/v1/jobs/0123456789").headers["content-type"] == "application/json"


def test_a_job_whose_uploaded_dataset_was_deleted_is_refused_resuming_saying_why(api):
    uploaded = api.post("/v1/datasets", files={"file": ("set.zip", image_folder_zip(["a", "b"]), "application/zip")})
    dataset_id = uploaded.json()["id"]
    spec = {"model": {"arch": "softmax_regression"}, "data": {"dataset": f"uploaded:{dataset_id}"}, "epochs": 1}
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # before an epoch: no state to keep
    assert api.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    refused = api.post(f"/v1/jobs/{job_id}/resume")
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"job {job_id} trained on uploaded dataset {dataset_id}, which was deleted: it cannot resume; "
        "submit a new job on another dataset"
    )
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_metrics_and_logs_of_a_job(api, trained_job):
    metrics = api.get(f"/v1/jobs/{trained_job}/metrics").json()
    assert metrics["job_id"] == trained_job and [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert metrics["epochs"][2]["test_acc"] == 0.95 and metrics["epochs"][0]["train_loss"] == 1.0
    assert (metrics["best_epoch"], metrics["best_selected_on"]) == (2, "val_acc")
    job = api.get(f"/v1/jobs/{trained_job}").json()
    assert (job["status"], job["epoch"], job["epochs"]) == ("succeeded", 3, 3)
    # The list shows the epoch job:<id> serves (validation's best), not the last one.
    [listed] = api.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
    assert listed["best_metrics"]["epoch"] == 2 and listed["best_metrics"]["test_acc"] == 0.5
    assert listed["latest_metrics"]["epoch"] == 3
    logs = api.get(f"/v1/jobs/{trained_job}/logs")
    assert logs.status_code == 200 and logs.json() == {"job_id": trained_job, "lines": [], "next": 0}
    assert locs(api.get(f"/v1/jobs/{trained_job}/logs", params={"limit": 0})) == [["query", "limit"]]


# --- models -------------------------------------------------------------------------------------------


def test_a_checkpoint_registered_again_says_which_version_it_already_is(api, trained_job):
    assert api.post("/v1/models", json={"name": "twice", "job_id": trained_job}).json()["warnings"] == []
    again = api.post("/v1/models", json={"name": "twice", "job_id": trained_job, "checkpoint": "best"}).json()
    assert again["version"] == 2 and again["warnings"] == [
        f"version 2 is the checkpoint version 1 is (job {trained_job}, epoch 2)"
    ]
    other = api.post("/v1/models", json={"name": "other", "job_id": trained_job}).json()
    assert other["warnings"] == []  # another model's version: not a repeat


def test_register_alias_threshold_and_delete(api, trained_job):
    first = api.post("/v1/models", json={"name": "shoes", "job_id": trained_job, "checkpoint": "best"})
    assert first.status_code == 201 and first.json()["version"] == 1, first.text
    second = api.post("/v1/models", json={"name": "shoes", "job_id": trained_job, "checkpoint": "last"})
    assert second.json()["version"] == 2 and first.json()["warnings"] == second.json()["warnings"] == []
    aliased = api.put("/v1/models/shoes/aliases/production", json={"version": 1})
    assert aliased.status_code == 200 and aliased.json()["aliases"] == {"production": 1}
    listed = api.get("/v1/models").json()
    assert listed["count"] == 1 and listed["data"][0]["name"] == "shoes"
    assert "did you mean 'shoes'?" in api.get("/v1/models/shoe").json()["detail"]

    patched = api.patch("/v1/models/shoes/versions/2", json={"threshold": 0.7})
    assert patched.status_code == 200 and patched.json()["threshold"] == 0.7
    assert api.patch("/v1/models/shoes/versions/2", json={}).json()["threshold"] == 0.7  # left out: kept
    assert api.patch("/v1/models/shoes/versions/2", json={"threshold": None}).json()["threshold"] is None
    assert locs(api.patch("/v1/models/shoes/versions/2", json={"threshold": 1.5})) == [["body", "threshold"]]
    assert api.patch("/v1/models/shoes/versions/9", json={"threshold": 0.5}).status_code == 404

    under_alias = api.delete("/v1/models/shoes/versions/1")
    assert under_alias.status_code == 409 and "`trainyard models unalias shoes production`" in under_alias.text
    assert api.delete("/v1/models/shoes/versions/2").status_code == 204
    assert [v["version"] for v in api.get("/v1/models/shoes").json()["versions"]] == [1]
    removed = api.delete("/v1/models/shoes/aliases/production")
    assert removed.status_code == 200 and removed.json()["aliases"] == {} and removed.json()["warnings"] == []
    again = api.delete("/v1/models/shoes/aliases/production")
    assert again.status_code == 404 and "has no alias 'production'; it has no aliases yet" in again.text
    assert api.delete("/v1/models/nothing/aliases/production").status_code == 404
    digits = api.put("/v1/models/shoes/aliases/3", json={"version": 1})  # shoes@3 would read like shoes:3
    assert digits.status_code == 422 and locs(digits) == [["path", "alias"]], digits.text
    assert digits.json()["detail"][0]["msg"].startswith("alias '3' is all digits: shoes@3 would read like version 3")
    assert api.delete("/v1/models/shoes/versions/1").status_code == 204  # the model's last version
    assert api.get("/v1/models/shoes").status_code == 404


def test_a_version_that_changes_what_callers_see_is_registered_with_warnings(api, trained_job):
    """Another input shape or other classes under the same name: registered (the registry does
    not judge), and the answer says what changed from what the bare name served before, and what
    it serves now."""
    import io

    from safetensors.torch import save

    from models.nets.archs import build_model
    from models.spec.job import JobSpec

    assert api.post("/v1/models", json={"name": "shoes", "job_id": trained_job}).json()["warnings"] == []
    net = build_model(
        JobSpec.model_validate({**SOFTMAX_SPEC, "model": {"arch": "softmax_regression"}}).model, [3, 8, 8], 2
    )
    form = {"name": "shoes", "model": '{"arch": "softmax_regression"}', "classes": '["cat", "dog"]'}

    def imported() -> list[str]:
        weights = {"file": ("w.safetensors", io.BytesIO(save(net.state_dict())))}
        answer = api.post("/v1/models/import", data={**form, "input_shape": "[3, 8, 8]"}, files=weights)
        assert answer.status_code == 201, answer.text
        return answer.json()["warnings"]

    assert imported() == [
        "version 2 takes 3x8x8 inputs where version 1 takes 1x28x28",
        "version 2 answers cat, dog where version 1 answers 10 classes (0, 1, 2, ...); 'shoes' now means version 2",
    ]
    assert imported() == []  # version 3 is like version 2, which the bare name served
    versions = api.get("/v1/models/shoes").json()["versions"]
    assert [v["epoch"] for v in versions] == [2, None, None]  # an import is no job's epoch
    first_production = api.put("/v1/models/shoes/aliases/production", json={"version": 1})
    assert first_production.json()["warnings"] == [  # the bare name meant version 3 until now
        "version 1 takes 1x28x28 inputs where version 3 takes 3x8x8",
        "version 1 answers 10 classes (0, 1, 2, ...) where version 3 answers cat, dog; 'shoes' and "
        "shoes@production now mean version 1",
    ]
    assert imported() == [
        "version 4 takes 3x8x8 inputs where version 1 takes 1x28x28",
        "version 4 answers cat, dog where version 1 answers 10 classes (0, 1, 2, ...); 'shoes' still means "
        "version 1 (shoes@production) until that alias moves",
    ]
    assert "warnings" not in api.get("/v1/models/shoes").json()["versions"][0]

    back_to_newest = api.delete("/v1/models/shoes/aliases/production")  # version 4 is the newest
    assert back_to_newest.json()["warnings"] == [
        "version 4 takes 3x8x8 inputs where version 1 takes 1x28x28",
        "version 4 answers cat, dog where version 1 answers 10 classes (0, 1, 2, ...); 'shoes' now means "
        "version 4, the newest",
    ]
    assert api.put("/v1/models/shoes/aliases/production", json={"version": 1}).status_code == 200  # as it was
    moved = api.put("/v1/models/shoes/aliases/production", json={"version": 4})
    assert moved.status_code == 200 and moved.json()["aliases"] == {"production": 4}
    assert moved.json()["warnings"] == [
        "version 4 takes 3x8x8 inputs where version 1 takes 1x28x28",
        "version 4 answers cat, dog where version 1 answers 10 classes (0, 1, 2, ...); shoes@production and "
        "'shoes' now mean version 4",
    ]
    assert api.put("/v1/models/shoes/aliases/production", json={"version": 3}).json()["warnings"] == []  # alike
    assert api.put("/v1/models/shoes/aliases/staging", json={"version": 1}).json()["warnings"] == []  # a new alias
    page = api.post("/ui/models/shoes/aliases", data={"alias": "staging", "version": "2"}, follow_redirects=False)
    assert page.status_code == 200 and 'id="warnings"' in page.text
    assert "shoes@staging now means version 2" in page.text
    alike = api.post("/ui/models/shoes/aliases", data={"alias": "staging", "version": "3"}, follow_redirects=False)
    assert alike.status_code == 303


def test_registry_errors(api, trained_job):
    assert api.get("/v1/models/nothing").status_code == 404
    assert api.put("/v1/models/nothing/aliases/production", json={"version": 1}).status_code == 404
    unknown_job = api.post("/v1/models", json={"name": "x", "job_id": "00000000-0000-4000-8000-000000000000"})
    assert unknown_job.status_code == 404
    queued = submitted(api)["id"]
    no_checkpoint = api.post("/v1/models", json={"name": "x", "job_id": queued})
    assert no_checkpoint.status_code == 409 and isinstance(no_checkpoint.json()["detail"], str)
    spaced = api.post("/v1/models", json={"name": "no spaces", "job_id": trained_job})
    assert locs(spaced) == [["body", "name"]] and spaced.json()["detail"][0]["msg"] == (
        "should be 1 to 64 lower-case letters, digits, '.', '_' or '-', the first a letter or a digit; got 'no spaces'"
    )
    prefix = api.post("/v1/models", json={"name": "x", "job_id": "abc"})
    assert (
        prefix.json()["detail"][0]["msg"]
        == "should be a job's id or a unique prefix of it (6 to 36 characters); got 'abc'"
    )
    assert "should be 1 to 64 lower-case" in api.get("/v1/models/Shoes").json()["detail"][0]["msg"]
    assert locs(api.get("/v1/models/shoes/versions/0/export")) == [["path", "version"]]


def test_an_export_is_sent_from_a_temporary_file_that_is_removed_after(api, trained_job, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    sent = api.get(f"/v1/models/job:{trained_job}/export", params={"format": "onnx"})
    assert sent.status_code == 200 and int(sent.headers["content-length"]) == len(sent.content) > 1000
    assert sent.headers["content-disposition"].startswith('attachment; filename="job-')
    refused = api.get(f"/v1/models/job:{trained_job}/export", params={"format": "safetensors", "inputs": "pixels"})
    assert refused.status_code == 422 and "holds weights only" in refused.text
    assert list((tmp_path / "temporary").iterdir()) == []


def test_a_models_parameters_are_given_whole_while_small_else_by_their_statistics(api, trained_job):
    answer = api.get(f"/v1/models/job:{trained_job}/parameters")
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert (found["job_id"], found["epoch"], found["total"]) == (trained_job, 2, 7850)  # job:ID serves its best
    weight, bias = found["parameters"]
    assert (weight["name"], weight["shape"], weight["values"]) == ("1.weight", [10, 784], None)
    assert weight["min"] <= weight["mean"] <= weight["max"] and weight["norm"] > 0
    assert bias["shape"] == [10] and len(bias["values"]) == 10 and min(bias["values"]) == bias["min"]
    assert found["estimation_error"] is None  # Fashion-MNIST: no weights generated it
    whole = api.get(f"/v1/models/job:{trained_job}:last/parameters", params={"max_values": 10_000}).json()
    assert whole["epoch"] == 3 and len(whole["parameters"][0]["values"]) == 10
    assert locs(api.get(f"/v1/models/job:{trained_job}/parameters?max_values=-1")) == [["query", "max_values"]]
    missing = api.get("/v1/models/job:0123456789ab/parameters")
    assert missing.status_code == 404 and "no job 0123456789ab" in missing.text, missing.text
    page = api.get(f"/ui/jobs/{trained_job}").text
    assert f'data-src="/ui/fragments/jobs/{trained_job}/parameters"' in page
    section = api.get(f"/ui/fragments/jobs/{trained_job}/parameters").text  # read when the section is opened
    assert "7,850 learned numbers" in section and "<td>1.weight</td><td>10×784</td>" in section, section
    assert "estimation-error" not in section


def test_an_export_imports_back_as_it_was_trained_and_a_contrary_field_is_refused(api, trained_job):
    """A safetensors export says its architecture, classes and input shape: left out, they are
    taken from it; given otherwise (the same tensors fit other activations), a 422 says so."""
    assert api.post("/v1/models", json={"name": "shoes", "job_id": trained_job}).status_code == 201
    exported = api.get("/v1/models/shoes/versions/1/export", params={"format": "safetensors"}).content

    def imported(**fields):
        form = {"name": "brought", **fields}
        return api.post("/v1/models/import", data=form, files={"file": ("shoes.safetensors", exported)})

    back = imported()
    assert back.status_code == 201, back.text
    original = api.get("/v1/models/shoes").json()["versions"][0]
    assert (back.json()["classes"], back.json()["input_shape"]) == (original["classes"], original["input_shape"])
    wrong = imported(model='{"arch": "mlp", "hidden": [8]}', classes='["a", "b"]', input_shape="[1, 28, 28]")
    assert locs(wrong) == [["body", "model"], ["body", "classes"]]
    said = wrong.json()["detail"][0]["msg"]
    assert said.startswith("the file was trained as {") and '"arch": "softmax_regression"' in said
    assert imported(model='{"arch": "softmax_regression"}').status_code == 201  # the same, said
    foreign = save({"0.weight": torch.zeros(2, 2)})  # safetensors with no trainyard header
    bare = api.post("/v1/models/import", data={"name": "bare"}, files={"file": ("w.safetensors", foreign)})
    assert locs(bare) == [["body", "model"]] and "model is required" in bare.json()["detail"][0]["msg"]
    program = api.get("/v1/models/shoes/versions/1/export", params={"format": "pt2"}).content
    other_kind = api.post("/v1/models/import", data={"name": "bare"}, files={"file": ("shoes.pt2", program)})
    assert locs(other_kind) == [["body", "file"]], other_kind.text  # what is wrong is the file, not a field
    assert "pt2, TorchScript, ONNX and pickled files are not taken" in other_kind.json()["detail"][0]["msg"]


def test_a_model_of_standardised_columns_imports_back_and_answers_as_before(api, tmp_path):
    import torch

    from models.checkpoint import write_checkpoint
    from models.inference.interchange import export, imported_meta
    from models.inference.predictor import Predictor
    from models.nets.archs import build_model
    from models.spec.job import MODEL_SPEC

    spec = MODEL_SPEC.validate_python({"arch": "linear_regression"})
    torch.manual_seed(0)
    net = build_model(spec, [2], 1)
    meta = imported_meta(
        spec.model_dump(mode="json"),
        None,
        [2],
        [3.5, 110.0],
        [1.7, 52.0],
        columns=["rooms", "area"],
        target=(350_000.0, 120_000.0),  # a price learnt standardised, answered in its own units
    )
    write_checkpoint(tmp_path / "m.safetensors", net.state_dict(), meta)
    original = Predictor.from_checkpoint(tmp_path / "m.safetensors")
    exported = export(original, "safetensors")
    imported = api.post("/v1/models/import", data={"name": "houses"}, files={"file": ("h.safetensors", exported)})
    assert imported.status_code == 201, imported.text
    rows = [[2.0, 50.0], [5.0, 180.0]]
    answer = api.post("/v1/predict", json={"model": "houses", "inputs": rows}).json()
    assert answer["model"]["columns"] == ["rooms", "area"]
    expected = original.probabilities(original.decode_values(rows)).squeeze(1).tolist()
    assert all(abs(value) > 1_000 for value in expected)
    assert [p["value"] for p in answer["predictions"]] == pytest.approx(expected, rel=1e-5)
    flat = api.post("/v1/predict", json={"model": "houses", "inputs": [2.0, 50.0]})
    assert locs(flat) == [["body", "inputs"]] and "[[2.0, 50.0]] for one row, or [[2.0], [50.0]]" in flat.text
    assert not flat.json()["detail"][0]["msg"].startswith("Value error")
    named = api.post("/v1/predict", json={"model": "houses", "inputs": [{"rooms": 2, "area": 50}]})
    assert locs(named) == [["body", "inputs"]] and "in the model's column order" in named.text, named.text
    for field, value in (("top_k", 3), ("threshold", 0.5)):  # a regression has no classes to rank or keep
        refused = api.post("/v1/predict", json={"model": "houses", "inputs": rows, field: value})
        assert locs(refused) == [["body", field]] and "does not classify" in refused.text, refused.text
        queried = api.post(f"/v1/predict?{field}={value}", json={"model": "houses", "inputs": rows})
        assert locs(queried) == [["query", field]] and "does not classify" in queried.text, queried.text
    wrong = api.post(
        "/v1/models/import",
        data={"name": "houses", "normalize": '{"mean": [1], "std": [1]}'},
        files={"file": ("h.safetensors", exported)},
    )
    assert locs(wrong) == [["body", "normalize"]]


def test_the_predict_page_takes_a_numeric_models_rows(api, tmp_path, trained_job):
    from models.checkpoint import write_checkpoint
    from models.inference.interchange import export, imported_meta
    from models.inference.predictor import Predictor
    from models.nets.archs import build_model
    from models.spec.job import MODEL_SPEC

    spec = MODEL_SPEC.validate_python({"arch": "linear_regression"})
    net = build_model(spec, [2], 1)
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[2.0, -3.4]]))
        net[1].bias.fill_(4.2)
    write_checkpoint(
        tmp_path / "m.safetensors", net.state_dict(), imported_meta(spec.model_dump(mode="json"), None, [2])
    )
    exported = export(Predictor.from_checkpoint(tmp_path / "m.safetensors"), "safetensors")
    assert api.post("/v1/models/import", data={"name": "line"}, files={"file": ("l.st", exported)}).status_code == 201
    page = api.post("/ui/predict", data={"model": "line", "rows": "1, 1\n\n0,0", "top_k": "3"})
    assert page.status_code == 200, page.text
    values = re.findall(r'<td class="value">([^<]+)</td>', page.text)
    assert [float(v) for v in values] == pytest.approx([2 - 3.4 + 4.2, 4.2], rel=1e-5)  # top k is a classifier's
    assert 'id="values-only"' in page.text  # and the page says so
    bad = api.post("/ui/predict", data={"model": "line", "rows": "1,1\n1,x"})
    assert bad.status_code == 422 and "line 2 (&#39;1,x&#39;) is not numbers separated by commas" in bad.text
    narrow = api.post("/ui/predict", data={"model": "line", "rows": "1,1\n\n1"})  # counted as typed, blank included
    assert narrow.status_code == 422 and "line 3 has 1 value" in narrow.text and "inputs[" not in narrow.text
    for typed in ("0", "abc", "1001", "2.5"):  # said on the page, which keeps what was typed
        wrong_k = api.post("/ui/predict", data={"model": "line", "rows": "1,1", "top_k": typed})
        assert wrong_k.status_code == 422 and "top k: give a whole number from 1 to 1000;" in wrong_k.text, typed
        assert 'name="rows"' in wrong_k.text and f'value="{typed}"' in wrong_k.text, typed
    both = api.post(
        "/ui/predict", data={"model": "line", "rows": "1,1"}, files={"files": ("a.png", png_bytes(1, seed=1))}
    )
    assert both.status_code == 422 and "give images or rows, not both" in both.text
    for nameless in ({}, {"model": " "}):  # said on the page, not as FastAPI's JSON
        unnamed = api.post("/ui/predict", data={**nameless, "rows": "1,1"})
        assert unnamed.status_code == 422 and "choose a model: a registered one from the list" in unnamed.text
        assert 'id="error"' in unnamed.text and 'name="rows"' in unnamed.text
    neither = api.post("/ui/predict", data={"model": "line"})
    assert neither.status_code == 422 and "or type a numeric model&#39;s rows" in neither.text
    pictures = api.post("/ui/predict", data={"model": f"job:{trained_job}", "rows": "1,1"})  # an image model
    assert pictures.status_code == 422 and "takes images, not numeric inputs; choose its images above" in pictures.text
    assert "curl" not in pictures.text
    server = api.app.state.models
    looked_up = server.get

    calls = []

    async def slow_lookup(reference):  # the page's first lookup (to learn the task) is under the deadline too
        calls.append(reference)
        await asyncio.sleep(0.5 if len(calls) == 1 else 0)
        return await looked_up(reference)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server, "settings", server.settings.model_copy(update={"predict_timeout_ms": 100}))
        patch.setattr(server, "get", slow_lookup)
        late = api.post("/ui/predict", data={"model": "line", "rows": "1,1"})
    assert late.status_code == 503 and "no answer within" in late.text and late.headers["retry-after"], late.text

    classifier = MODEL_SPEC.validate_python({"arch": "softmax_regression"})
    net = build_model(classifier, [2], 3)
    write_checkpoint(
        tmp_path / "c.safetensors",
        net.state_dict(),
        imported_meta(classifier.model_dump(mode="json"), ["a", "b", "c"], [2]),
    )
    exported = export(Predictor.from_checkpoint(tmp_path / "c.safetensors"), "safetensors")
    assert api.post("/v1/models/import", data={"name": "pick"}, files={"file": ("c.st", exported)}).status_code == 201
    labelled = api.post("/ui/predict", data={"model": "pick", "rows": "1,2", "top_k": "2"})
    assert labelled.status_code == 200, labelled.text
    [ranked] = re.findall(r'<td class="top-k">([^<]+)</td>', labelled.text)
    assert len(ranked.split("), ")) == 2 and "<th>top 2</th>" in labelled.text, ranked
    every = api.post("/ui/predict", data={"model": "pick", "rows": "1,2", "top_k": "10"})  # 3 classes: its 3
    assert every.status_code == 200 and "<th>top 3</th>" in every.text, every.text


def test_an_exported_header_that_resizes_or_lies_imports_as_it_says_or_is_refused(api):
    """A job that resized its inputs inside the network exports that too, and imports back serving
    what it served; a header whose values no model could have is a 422, not a 500."""
    import json

    from safetensors.torch import save

    from models.checkpoint import FORMAT, META_KEY
    from models.data.contract import InputContract
    from models.nets.archs import build_model
    from models.spec.job import JobSpec

    spec = JobSpec.model_validate({**SOFTMAX_SPEC, "data": {"dataset": "fashion-mnist", "resize": 14}})
    classes = [str(i) for i in range(10)]
    meta = {
        "format": FORMAT,
        "spec": spec.model_dump(mode="json"),
        "task": "classification",
        "classes": classes,
        "input_shape": [1, 28, 28],
        "input": InputContract.image(1, 28, 28, classes).with_normalisation([0.5], [0.25]).to_json(),
        "threshold": 0.3,
    }
    state = build_model(spec.model, (1, 28, 28), 10, resize=14).state_dict()

    def imported(header: dict, **fields):
        weights = save(state, metadata={META_KEY: json.dumps(header)})
        return api.post("/v1/models/import", data={"name": "resized", **fields}, files={"file": ("w", weights)})

    back = imported(meta)
    assert back.status_code == 201 and back.json()["threshold"] == 0.3, back.text
    assert api.post("/v1/predict", data={"model": "resized"}, files=image()).status_code == 200
    contrary = imported(meta, normalize='{"mean": [0.1], "std": [1.0]}')
    assert locs(contrary) == [["body", "normalize"]]
    assert locs(imported({**meta, "input_shape": [1, 60000, 60000]})) == [["body", "input_shape"]]
    assert locs(imported({**meta, "classes": "ten"})) == [["body", "classes"]]
    for hostile in ({"resize": "x", "spec": None}, {"threshold": "high"}, {"input": {"mean": 5}}):
        assert locs(imported({**meta, **hostile})) == [["body", "file"]], hostile
    deep = save(state, metadata={META_KEY: "[" * 100_000 + "]" * 100_000})
    nested = api.post("/v1/models/import", data={"name": "deep"}, files={"file": ("w", deep)})
    assert locs(nested) == [["body", "model"]]  # no header it can read: the architecture must be said


def test_import_validates_each_field_before_reading_the_weights(api):
    def imported(**fields):
        form = {"name": "imported", "model": '{"arch": "mlp", "hidden": [16]}', **fields}
        return api.post("/v1/models/import", data=form, files={"file": ("w.safetensors", b"not weights")})

    assert locs(imported(model="[1]")) == [["body", "model"]]
    assert locs(imported(model="{")) == [["body", "model"]]
    assert locs(imported(classes='["only one"]')) == [["body", "classes"]]
    assert locs(imported(classes='["a", "a"]')) == [["body", "classes"]]  # which would predict answer?
    assert locs(imported(classes="[" * 20_000 + "]" * 20_000)) == [["body", "classes"]]
    assert locs(imported(input_shape="[2, 28, 28]")) == [["body", "input_shape"]]
    assert locs(imported(input_shape="[0]")) == [["body", "input_shape"]]
    assert locs(imported(threshold="2")) == [["body", "threshold"]]
    assert ["body", "colour"] in locs(imported(colour="rgb"))
    unreadable = imported(classes='["a", "b"]', input_shape="[1, 28, 28]")
    assert locs(unreadable) == [["body", "file"]]
    assert unreadable.json()["detail"][0]["msg"].startswith("not a safetensors file: "), unreadable.text
    assert api.get("/v1/models").json()["count"] == 0


# --- datasets -----------------------------------------------------------------------------------------


def test_dataset_uploads_are_validated(api):
    def upload(content: bytes, **form):
        return api.post("/v1/datasets", data=form, files={"file": ("d.zip", content, "application/zip")})

    not_zip = upload(b"plain text")
    assert not_zip.status_code == 422 and isinstance(not_zip.json()["detail"], str)
    no_layout = upload(zip_bytes({"readme.txt": b"hello"}))
    assert no_layout.status_code == 422 and isinstance(no_layout.json()["detail"], str)
    archive = image_folder_zip(["cat", "dog"], per_class=5, test_per_class=2)
    assert locs(upload(archive, test_fraction="1.5")) == [["body", "test_fraction"]]
    assert locs(upload(archive, color="sepia")) == [["body", "color"]]
    assert ["body", "colour"] in locs(upload(archive, colour="rgb"))
    both = upload(archive, label_column="a", target_column="b")
    assert locs(both) == [["body", "target_column"]] and "not both" in both.text

    # The file sent wrongly: a form without it, a text field (curl -F file=x.zip, no @), the raw body.
    def problem(answer) -> str:
        assert answer.status_code == 422 and locs(answer) == [["body", "file"]], answer.text
        return answer.json()["detail"][0]["msg"]

    assert "-F file=@path/to/file" in problem(api.post("/v1/datasets", data={"name": "x"}))
    as_text = api.post("/v1/datasets", files={"name": (None, "x"), "file": (None, "x.zip")})
    assert as_text.json()["detail"][0].get("ctx", {}).get("error") != {}  # an exception's message, not {}
    text = problem(as_text)
    assert text.startswith("field 'file' arrived as text, not as a file") and "the @ sends the file" in text
    missing = problem(api.post("/v1/datasets", files={"name": (None, "x")}))
    assert missing.startswith("field 'file' is required: the file to upload; with curl")
    misnamed = problem(api.post("/v1/datasets", files={"archive": ("few.zip", archive, "application/zip")}))
    assert misnamed.startswith("field 'file' is required: the file to upload; the file came as 'archive': name it")
    raw = problem(api.post("/v1/datasets", content=archive, headers={"content-type": "application/zip"}))
    assert raw.startswith("send the file as a multipart/form-data field named 'file', not as the body itself")
    assert "Content-Type: application/zip" in raw
    assert api.get("/v1/datasets").json() == {"data": [], "count": 0}


def test_a_csv_upload_names_its_target_column(api):
    def upload(content: bytes, **form):
        return api.post("/v1/datasets", data=form, files={"file": ("d.zip", content, "application/zip")})

    houses = zip_bytes({"houses.csv": b"rooms,SalePrice\n" + b"".join(b"%d,%d\n" % (i, 1000 * i) for i in range(20))})
    named = upload(houses, name="houses", target_column=" SalePrice")  # as the header is read: stripped
    assert named.status_code == 201 and named.json()["task"] == "regression" and named.json()["columns"] == ["rooms"]
    unknown = upload(houses, name="other", target_column="price")
    assert unknown.status_code == 422 and "target_column 'price' is not a column of the CSV" in unknown.text


def test_an_idx_upload_names_its_classes(api, tmp_path):
    archive = zip_bytes(idx_files(tmp_path))

    def upload(**form):
        return api.post("/v1/datasets", data=form, files={"file": ("d.zip", archive, "application/zip")})

    named = upload(name="shapes", classes="circle, square,star,ring")
    assert named.status_code == 201 and named.json()["classes"] == ["circle", "square", "star", "ring"], named.text
    listed = upload(name="shapes-json", classes='["circle", "square, filled", "star", "ring"]')
    assert listed.json()["classes"][1] == "square, filled"
    for classes, said in (
        ("circle,circle,star,ring", "given more than once: 'circle'"),
        ("circle", "classes gives 1 name: a classifier has at least two classes"),
        ("circle,square,,ring,", "classes has an empty name (number 3, 5): a comma too many?"),
        ('{"0": "circle"}', "classes gives 1 name"),  # not a list: one name, as a comma-separated field reads it
        ("[1, 2]", "classes must be a list of names (strings)"),
        ("[" * 20_000 + "]" * 20_000, "nests arrays or objects too deeply"),  # past the JSON decoder's recursion
    ):
        refused = upload(name="bad", classes=classes)
        assert locs(refused) == [["body", "classes"]] and said in refused.text, refused.text
    short = upload(name="short", classes="circle,square")
    assert short.status_code == 422 and "give 4, label 0 first" in short.text, short.text
    folders = image_folder_zip(["cat", "dog"], per_class=5, test_per_class=2)
    pets = api.post("/v1/datasets", data={"classes": "a,b"}, files={"file": ("p.zip", folders, "application/zip")})
    assert pets.status_code == 422 and "which name their own classes" in pets.text
    form = {"name": "page", "classes": "o,x,*,+"}
    page = api.post("/ui/datasets", data=form, files={"file": ("d.zip", archive, "application/zip")})
    assert page.status_code == 201 and page.json()["classes"] == ["o", "x", "*", "+"], page.text


def test_a_dataset_name_that_no_spec_could_say_is_refused_and_a_file_name_is_made_one(api):
    archive = image_folder_zip(["cat", "dog"], per_class=5, test_per_class=2)
    for bad in ("cats/dogs", " pets", "pets ", "a\\b", ".."):
        refused = api.post("/v1/datasets", data={"name": bad}, files={"file": ("p.zip", archive, "application/zip")})
        assert refused.status_code == 422, refused.text
        [problem] = refused.json()["detail"]
        assert problem["loc"] == ["body", "name"] and "specs call it uploaded:<name>" in problem["msg"], problem
    named = api.post("/v1/datasets", files={"file": (" my\\pets .zip", archive, "application/zip")})
    assert named.status_code == 201 and named.json()["name"] == "my-pets", named.text


def test_datasets_are_listed_read_and_404_when_unknown(api):
    archive = image_folder_zip(["cat", "dog"], per_class=5, test_per_class=2)
    created = api.post("/v1/datasets", data={"name": "pets"}, files={"file": ("pets.zip", archive, "application/zip")})
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["classes"] == ["cat", "dog"] and (dataset["num_train"], dataset["num_test"]) == (10, 4)
    again = api.post("/v1/datasets", data={"name": "pets"}, files={"file": ("pets.zip", archive, "application/zip")})
    assert again.status_code == 200 and again.json()["id"] == dataset["id"]
    assert api.get("/v1/datasets").json()["count"] == 1
    assert api.get(f"/v1/datasets/{dataset['id']}").json()["name"] == "pets"
    assert api.get("/v1/datasets/pets").json()["id"] == dataset["id"]  # by name, as `uploaded:pets` names it
    assert api.get("/v1/datasets/ffffffff").status_code == 404
    assert api.get("/v1/datasets/pet").json() == {"detail": "dataset pet not found; did you mean pets?"}
    page = api.post("/ui/datasets", data={"nmae": "x"}, files={"file": ("pets.zip", archive, "application/zip")})
    assert locs(page) == [["body", "nmae"]] and "did you mean 'name'?" in page.text  # as the API refuses it
    assert api.delete("/v1/datasets/ffffffff").status_code == 404
    assert api.delete("/v1/datasets/pets").status_code == 204
    assert api.get(f"/v1/datasets/{dataset['id']}").status_code == 404


# --- sweeps -------------------------------------------------------------------------------------------


def test_sweep_validation_names_the_path_and_creates_nothing(api):
    base = {**SOFTMAX_SPEC, "epochs": 1}
    bad = api.post("/v1/sweeps", json={"name": "bad", "base": base, "grid": {"optimizer.lr": [0.1, -1]}})
    (problem,) = bad.json()["detail"]
    assert bad.status_code == 422 and problem["loc"] == ["body", "grid", "optimizer.lr"] and "-1" in problem["msg"]
    misnamed = api.post("/v1/sweeps", json={"name": "bad", "base": base, "grid": {"optimizer.rate": [0.1, 0.2]}})
    assert locs(misnamed) == [["body", "grid", "optimizer.rate"]]  # the path is wrong once, not per value
    unknown = api.post(
        "/v1/sweeps", json={"name": "bad", "base": {**base, "data": {"dataset": "nope"}}, "grid": {"epochs": [1, 2]}}
    )
    assert locs(unknown)[0][:2] == ["body", "base"]
    flat = api.post("/v1/sweeps", json={"name": "bad", "base": {**base, "data": "mnist"}, "grid": {"epochs": [1]}})
    assert flat.status_code == 422 and locs(flat)[0][:3] == ["body", "base", "data"], flat.text
    neither = api.post("/v1/sweeps", json={"name": "bad", "base": base})
    assert neither.status_code == 422 and "one of grid, random or tpe" in neither.text
    grid = {"optimizer.lr": [0.1, 0.2]}
    unsplit = api.post("/v1/sweeps", json={"name": "bad", "base": base, "grid": grid, "metric": "val_acc"})
    assert locs(unsplit) == [["body", "metric"]] and "set data.val_fraction" in unsplit.json()["detail"][0]["msg"]
    regression = {"name": "bad", "base": {**REGRESSION_SPEC, "epochs": 1}, "grid": grid, "metric": "test_acc"}
    assert locs(api.post("/v1/sweeps", json=regression)) == [["body", "metric"]]
    assert api.get("/v1/sweeps").json()["count"] == 0 and api.get("/v1/jobs").json()["count"] == 0
    split = {**base, "data": {**base["data"], "val_fraction": 0.1}}
    ranked = api.post("/v1/sweeps", json={"name": "ok", "base": split, "grid": grid, "metric": "val_acc"})
    assert ranked.status_code == 202, ranked.text


def test_a_sweep_queues_its_trials_and_cancels_them(api):
    created = api.post(
        "/v1/sweeps", json={"name": "lrs", "base": {**SOFTMAX_SPEC, "epochs": 1}, "grid": {"optimizer.lr": [0.1, 0.2]}}
    )
    assert created.status_code == 202, created.text
    sweep = created.json()
    assert created.headers["location"] == f"/v1/sweeps/{sweep['id']}" and sweep["trials"] == 2
    assert api.get("/v1/jobs", params={"status": "queued"}).json()["count"] == 2
    assert api.get("/v1/sweeps").json()["count"] == 1
    assert api.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 202
    assert api.get("/v1/jobs", params={"status": "cancelled"}).json()["count"] == 2
    assert api.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 202  # again: nothing changes

    from sqlalchemy import update

    from service.core.tables import Sweep, utcnow

    ended = api.post("/v1/sweeps", json={"name": "done", "base": {**SOFTMAX_SPEC, "epochs": 1}, "grid": {"seed": [1]}})
    with db.session_scope() as session:  # as if its one trial had run to its end
        session.execute(update(Sweep).where(Sweep.id == ended.json()["id"]).values(finished_at=utcnow()))
    refused = api.post(f"/v1/sweeps/{ended.json()['id']}/cancel")
    assert refused.status_code == 409 and "already ended" in refused.json()["detail"]
    assert api.get("/v1/sweeps/ffffffff").status_code == 404
    assert locs(api.get("/v1/sweeps", params={"limit": 101})) == [["query", "limit"]]


def test_a_sweep_says_once_what_its_trials_were_warned_of(api):
    """Its trials train on a dataset no one has: the sweep's answer says so, as a job's does."""
    base = {**SOFTMAX_SPEC, "epochs": 1}
    found = api.post("/v1/sweeps", json={"name": "here", "base": base, "grid": {"optimizer.lr": [0.1, 0.2]}})
    assert found.status_code == 202 and found.json()["warnings"] == []
    missing = {**base, "data": {"dataset": "mnist"}}
    created = api.post("/v1/sweeps", json={"name": "nowhere", "base": missing, "grid": {"optimizer.lr": [0.1, 0.2]}})
    [warning] = created.json()["warnings"]
    assert created.status_code == 202 and warning.startswith("dataset mnist is not in this service's data folder")
    assert api.get(f"/v1/sweeps/{created.json()['id']}").json()["warnings"] == [warning]


@pytest.mark.parametrize(
    "search",
    [
        {"grid": {"optimizer.lr": [0.1, 0.2, 0.3, 0.4]}},
        {"tpe": {"count": 4, "distributions": {"optimizer.lr": {"uniform": [0.01, 1]}}}},
    ],
    ids=["grid", "tpe"],
)
def test_a_sweeps_answer_counts_the_trials_another_process_is_launching(service_env_on, monkeypatch, search):
    """The reaper advances the sweep while the POST does: it launches the second trial between the
    POST's first launch and its answer, and is still busy with it when the answer is read. The
    answer shows both trials launched, whichever process launched them."""
    import threading

    from service.core import broker, sweeps

    settings, send = service_env_on, broker.send_train_job
    reaper, busy, answered = None, threading.Event(), threading.Event()

    def reaper_pass(sweep_id: str):
        try:
            with db.session_scope() as session:
                sweeps.advance(session, sweep_id=sweep_id, settings=settings)
        finally:
            busy.set()

    def sending(job_id, queue=None):
        nonlocal reaper
        send(job_id, queue)
        if threading.current_thread() is reaper:  # its launch is under way: the answer is read now
            busy.set()
            assert answered.wait(30)
        elif reaper is None:  # the POST's first launch: the reaper's pass starts now
            with db.session_scope(write=False) as session:
                sweep_id = session.scalar(select(Job.sweep_id).where(Job.id == job_id))
            reaper = threading.Thread(target=reaper_pass, args=(sweep_id,))
            reaper.start()
            assert busy.wait(30)

    monkeypatch.setattr(broker, "send_train_job", sending)
    try:
        created = make_api().post(
            "/v1/sweeps", json={"name": "race", "base": {**SOFTMAX_SPEC, "epochs": 1}, "max_parallel": 2, **search}
        )
    finally:
        answered.set()
        if reaper is not None:
            reaper.join(30)
    assert created.status_code == 202, created.text
    sweep = created.json()
    assert (sweep["launched"], sweep["counts"]) == (2, {"queued": 2, "pending": 2}), sweep


# --- workers ------------------------------------------------------------------------------------------


def test_workers_lists_the_live_ones_with_each_ones_store(api):
    store = get_storage().url
    assert api.get("/v1/workers").json() == {"workers": [], "count": 0, "store": store, "store_problem": None}
    cpu = {"devices": [{"name": "cpu", "kind": "cpu", "memory_bytes": None}], "torch": "2", "cuda": None}
    with db.session_scope() as session:
        worker_registry.register(
            session, worker_id="w1", host="h", pid=1, queues=["cpu"], description=cpu, store="s3://elsewhere/files"
        )
    listed = api.get("/v1/workers").json()
    assert listed["count"] == 1 and listed["workers"][0]["id"] == "w1" and listed["workers"][0]["queues"] == ["cpu"]
    assert listed["workers"][0]["store"] == "s3://elsewhere/files" and listed["store"] == store
    cuda_build = {**cpu, "cuda": "13.0"}  # torch built for CUDA, on a machine without a GPU
    with db.session_scope() as session:
        worker_registry.register(
            session, worker_id="w2", host="h", pid=2, queues=["cpu"], description=cuda_build, store=store + "/"
        )
    same = {w["id"]: w["same_store"] for w in api.get("/v1/workers").json()["workers"]}
    assert same == {"w1": False, "w2": True}  # a URL with or without its trailing slash names one store
    page = api.get("/ui/workers").text
    assert f'<code id="api-store">{store}</code>' in page
    assert '<td class="store other" title="not this API\'s store">s3://elsewhere/files</td>' in page
    assert f'<td class="store">{store}/</td>' in page
    assert "2 / none" in page and "2 / 13.0 build, no GPU" in page


# --- predict ------------------------------------------------------------------------------------------


def test_predict_refuses_unknown_models_and_bad_fields(api, trained_job):
    unknown = api.post("/v1/predict", data={"model": "nothing"}, files=image())
    assert unknown.status_code == 404 and isinstance(unknown.json()["detail"], str)
    raw = api.post("/v1/models/nothing/predict", content=png_bytes(3, seed=1), headers={"Content-Type": "image/png"})
    assert raw.status_code == 404
    assert api.post("/v1/models/nothing/predict", files=image()).status_code == 415  # multipart: not a raw image
    job = f"job:{trained_job}"
    assert locs(api.post("/v1/predict", data={"model": job, "threshold": "1.5"}, files=image())) == [
        ["body", "threshold"]
    ]
    assert locs(api.post("/v1/predict", data={"model": job, "threshold": "nan"}, files=image())) == [
        ["body", "threshold"]
    ]
    assert locs(api.post("/v1/predict", data={"model": job, "top_k": "0"}, files=image())) == [["body", "top_k"]]
    assert locs(api.post("/v1/predict", data={"model": job, "top_k": "11"}, files=image())) == [["body", "top_k"]]
    assert locs(api.post("/v1/predict", data={"top_k": "1"}, files=image())) == [["body", "model"]]
    assert locs(api.post("/v1/predict", data={"model": job}, files={"other": ("a", b"x")})) == [["body", "other"]]
    singular = api.post("/v1/predict", data={"model": job}, files={"file": ("x.png", png_bytes(3, seed=1))})
    assert locs(singular) == [["body", "file"]]
    said = singular.json()["detail"][0]["msg"]
    assert said.startswith("unknown field 'file': did you mean 'files'? this upload takes")
    answered = api.post("/v1/predict", data={"model": job, "top_k": "2", "threshold": "0"}, files=image())
    assert answered.status_code == 200, answered.text
    (prediction,) = answered.json()["predictions"]
    assert prediction["filename"] == "x.png" and len(prediction["top_k"]) == 2


def test_predict_takes_top_k_and_threshold_from_the_query_as_the_raw_image_route_does(api, trained_job):
    """`?top_k=3` on /v1/predict was ignored: the answer ranked one class. It is honoured for a form
    and for JSON rows, refused where it is out of range (at query) or also given in the body."""
    job = f"job:{trained_job}"
    (ranked,) = api.post("/v1/predict?top_k=3&threshold=0", data={"model": job}, files=image()).json()["predictions"]
    assert len(ranked["top_k"]) == 3 and ranked["below_threshold"] is False
    assert locs(api.post("/v1/predict?top_k=0", data={"model": job}, files=image())) == [["query", "top_k"]]
    past = api.post("/v1/predict?top_k=11", data={"model": job}, files=image())  # the model has 10 classes
    assert locs(past) == [["query", "top_k"]] and "10 classes" in past.text
    raw = api.post(
        f"/v1/models/{job}/predict?top_k=11", content=png_bytes(3, seed=1), headers={"Content-Type": "image/png"}
    )
    assert locs(raw) == [["query", "top_k"]] and "10 classes" in raw.text
    assert locs(api.post("/v1/predict?top_k=%C2%B2", data={"model": job}, files=image())) == [["query", "top_k"]]  # ²
    assert locs(api.post("/v1/predict", data={"model": job, "top_k": "9" * 5000}, files=image())) == [["body", "top_k"]]
    assert locs(api.post("/v1/predict?threshold=2", data={"model": job}, files=image())) == [["query", "threshold"]]
    twice = api.post("/v1/predict?top_k=3", data={"model": job, "top_k": "2"}, files=image())
    assert locs(twice) == [["query", "top_k"]] and "give it once" in twice.json()["detail"][0]["msg"]
    rows = api.post("/v1/predict?top_k=3", json={"model": job, "inputs": [[0.0]]})
    assert locs(rows) == [["body", "inputs"]]  # the JSON path reads the query too, past its own checks
    assert locs(api.post("/v1/predict?top_k=3", json={"model": job, "inputs": [[0.0]], "top_k": 2})) == [
        ["query", "top_k"]
    ]
    documented = {
        p["name"]: p["in"] for p in api.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["parameters"]
    }
    assert documented == {"top_k": "query", "threshold": "query"}


def test_too_many_files_are_refused_naming_the_limit_however_many_parts_they_make(api, trained_job, monkeypatch):
    """Past the files limit, and past the form's cap on parts (the limit and 20): both refusals say
    "at most N per request", which the CLI follows by sending fewer at a time."""
    from service.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_files_per_request", 30)
    for count in (31, 64):
        files = [("files", (f"{n}.png", png_bytes(3, seed=1), "image/png")) for n in range(count)]
        refused = api.post("/v1/predict", data={"model": f"job:{trained_job}"}, files=files)
        assert refused.status_code == 422 and locs(refused) == [["body", "files"]], refused.text
        said = refused.json()["detail"][0]["msg"]
        assert said.endswith("at most 30 per request (TRAINYARD_MAX_FILES_PER_REQUEST)"), refused.text


def test_json_predict_says_how_images_are_sent(api, trained_job):
    no_inputs = api.post("/v1/predict", json={"model": f"job:{trained_job}"})
    assert locs(no_inputs) == [["body", "inputs"]] and "multipart" in no_inputs.json()["detail"][0]["msg"]
    files = api.post("/v1/predict", json={"model": f"job:{trained_job}", "inputs": {"files": ["a.png"]}})
    assert files.status_code == 415 and "multipart" in files.json()["detail"]
    rows = api.post("/v1/predict", json={"model": f"job:{trained_job}", "inputs": [[1.0, 2.0]]})
    assert locs(rows) == [["body", "inputs"]] and "multipart" in rows.json()["detail"][0]["msg"]
    assert "`trainyard predict MODEL boot.png`" in rows.json()["detail"][0]["msg"]  # the CLI's way too
    assert api.post("/v1/predict", json={"model": "nothing", "inputs": [[1.0]]}).status_code == 404
    not_a_number = api.post(
        "/v1/predict",
        content=b'{"model": "nothing", "inputs": [[1.0, NaN]]}',
        headers={"content-type": "application/json"},
    )
    assert locs(not_a_number) == [["body", "inputs", 0, 1]] and "finite" in not_a_number.json()["detail"][0]["msg"]


# --- evaluation ---------------------------------------------------------------------------------------


def test_evaluation_needs_a_classification_job_with_a_checkpoint(api, trained_job):
    regression = submitted(api, REGRESSION_SPEC)["id"]
    refused = api.get(f"/v1/jobs/{regression}/evaluation")
    assert refused.status_code == 422 and "classification" in refused.json()["detail"]
    assert api.get(f"/v1/jobs/{regression}/test-images/0.png").status_code == 422
    queued = submitted(api)["id"]
    waiting = api.get(f"/v1/jobs/{queued}/evaluation")
    assert waiting.status_code == 409 and isinstance(waiting.json()["detail"], str)
    assert locs(api.get(f"/v1/jobs/{trained_job}/evaluation", params={"limit": -1})) == [["query", "limit"]]
    assert api.get(f"/v1/jobs/{trained_job}/test-images/100000.png").status_code == 404
    png = api.get(f"/v1/jobs/{trained_job}/test-images/0.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"


def test_a_job_row_written_by_core_is_what_the_router_shows(api, service_env):
    """The routers read what core wrote, in their own sessions (no commit is needed from them)."""
    from models.spec.job import JobSpec

    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=JobSpec.model_validate(SOFTMAX_SPEC), task="classification").id
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


def test_a_dataset_that_a_stopped_job_could_resume_on_is_kept_unless_forced(api):
    archive = image_folder_zip(["cat", "dog"], per_class=5, test_per_class=2)
    dataset = api.post("/v1/datasets", data={"name": "kept"}, files={"file": ("k.zip", archive, "application/zip")})
    spec = {**SOFTMAX_SPEC, "data": {"dataset": "uploaded:kept"}, "epochs": 1}
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    assert "unfinished" in api.delete("/v1/datasets/kept").json()["detail"]
    with db.session_scope() as session:  # as a cancel mid-epoch leaves it
        job = session.get(Job, job_id)
        job.status = "cancelled"
        job.resume_state = {"key": f"checkpoints/{job_id}/training-state.safetensors", "size": 1, "sha256": None}
    refused = api.delete("/v1/datasets/kept")
    assert refused.status_code == 409 and f"can still be resumed: {job_id}" in refused.json()["detail"]
    kept_id = dataset.json()["id"]
    assert (
        f"(`trainyard datasets delete {kept_id} --force`, DELETE /v1/datasets/{kept_id}?force=true)"
        in (refused.json()["detail"])
    )
    assert api.delete("/v1/datasets/kept", params={"force": "true"}).status_code == 204
    assert api.get(f"/v1/datasets/{dataset.json()['id']}").status_code == 404
