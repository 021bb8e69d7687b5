"""The event stream (keep-alive, ids, resumption) and job logs, through real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support.servers import REPO, Stack, wait_until
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e

KEEPALIVE_S = 0.3
# LeNet with tiny batches: seconds an epoch, long enough for keep-alives between epochs.
SLOW = {
    "name": "slow-epochs",
    "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
    "data": {"dataset": "fashion-mnist", "limit_train": 1500},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "epochs": 2,
    "batch_size": 4,
    "seed": 3,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def events_stack(tmp_path_factory, data_dir):
    with Stack(
        home=tmp_path_factory.mktemp("events"),
        data_dir=data_dir,
        extra_env={"TRAINYARD_EVENTS_KEEPALIVE_SECONDS": str(KEEPALIVE_S)},
    ) as stack:
        yield stack


def read_stream(
    client: httpx.Client,
    job_id: str,
    *,
    last_event_id: str | None = None,
    stop_after: int | None = None,
    logs: bool = False,
) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """(event, id, data) of each event, and the comment lines, as they came over the wire."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, comments, current = [], [], {}
    with client.stream(
        "GET",
        f"/v1/jobs/{job_id}/events",
        params={"logs": str(logs).lower()},
        headers=headers,
        timeout=httpx.Timeout(30, read=60),
    ) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith(("event:", "id:", "data:")):
                key, value = line.split(":", 1)
                current[key] = value.strip()
            elif line == "" and current:
                assert "id" in current, f"an event without an id: {current}"
                events.append((current["event"], current["id"], json.loads(current["data"])))
                current = {}
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events, comments


def test_keep_alive_during_a_slow_epoch_and_resumption_without_gaps_or_repeats(events_stack):
    with events_stack.client() as client:
        job_id = submit(client, SLOW)

        def logged():
            return [line["message"] for line in client.get(f"/v1/jobs/{job_id}/logs").json()["lines"]]

        # The log is stored as the lease is renewed, not only at the end of an epoch.
        wait_until(lambda: any("attempt 1 of job" in m for m in logged()), timeout=60, what="the job's first line")
        assert client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"] == [], "the first epoch ended first"
        first, _ = read_stream(client, job_id, stop_after=3)  # queued, running, ... then the client drops
        rest, comments = read_stream(client, job_id, last_event_id=first[-1][1])
        assert any(c.startswith(": ping") for c in comments), "no keep-alive while an epoch ran"
        whole, _ = read_stream(client, job_id)  # the same stream read afresh once the job is over

    def contents(events):  # the same events, whether read live or afresh
        return sorted((kind, json.dumps(data, sort_keys=True)) for kind, _, data in events)

    assert contents(first + rest) == contents(whole), "resuming lost or repeated an event"
    ids = [event_id for kind, event_id, _ in first + rest if kind != "end"]
    assert len(set(ids)) == len(ids)  # one id per event
    kinds = [kind for kind, _, _ in whole]
    assert kinds[-1] == "end" and kinds.count("epoch") == SLOW["epochs"]
    assert [d["to_status"] for k, _, d in whole if k == "status"] == ["queued", "running", "succeeded"]
    assert kinds[-2:] == ["status", "end"]  # afresh too, the end comes after the epochs that led to it


def test_the_cli_follows_a_job_through_many_keep_alives(events_stack, tmp_path):
    """`submit --follow` and `jobs wait` read through keep-alive comments (each one a data-less
    event to an SSE client) and exit 0 when the job succeeds, 1 when it is cancelled or fails."""
    spec = tmp_path / "slow.json"
    spec.write_text(json.dumps(SLOW))
    followed = events_stack.cli("submit", str(spec), "--follow", timeout=240)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "Traceback" not in followed.stderr and "succeeded" in followed.stdout
    job_id = followed.stdout.split()[1]
    with events_stack.client() as client:
        whole, _ = read_stream(client, job_id)
        assert [k for k, _, _ in whole].count("epoch") == SLOW["epochs"]

        doomed = submit(client, {**SLOW, "name": "cancelled-while-waited-on", "epochs": 5})
        waiting = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", "jobs", "wait", doomed, "--json"],
            cwd=REPO,
            env=events_stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(
            lambda: client.get(f"/v1/jobs/{doomed}").json()["epoch"] >= 1,
            timeout=120,
            what="the first epoch, some keep-alives after the wait began",
        )
        assert client.post(f"/v1/jobs/{doomed}/cancel").status_code == 202
        out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 1, out + err
    assert json.loads(out)["status"] == "cancelled" and "Traceback" not in err


def test_an_open_event_stream_ends_whole_when_the_api_stops(tmp_path, data_dir):
    """Cut mid-body, a client read a broken stream and the API logged an ASGI error."""
    with Stack(home=tmp_path / "stopping", data_dir=data_dir, with_worker=False) as stack:
        with stack.client() as client:
            job_id = submit(client, {**SOFTMAX_SPEC, "epochs": 1})  # no worker: it stays queued, its stream open
            with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30, read=30)) as stream:
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("event:")) == "event: status"
                stack.procs["api"].send_signal(signal.SIGTERM)
                rest = list(lines)  # a body cut short raises httpx.RemoteProtocolError here
        assert "event: end" not in rest  # the job did not end: the stream did
        stack.stop()
        assert "ASGI callable returned without completing response" not in stack.log("api"), stack.log("api")


def test_a_malformed_last_event_id_is_a_422(events_stack):
    with events_stack.client() as client:
        job_id = submit(client, {**SOFTMAX_SPEC, "epochs": 1})
        answer = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "garbage"})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["header", "last-event-id"]
        events_stack.wait_for_job(client, job_id)


def test_a_failing_job_says_why_in_its_logs(events_stack):
    with events_stack.client() as client:
        job_id = submit(client, {**SOFTMAX_SPEC, "name": "no-such-data", "data": {"dataset": "mnist"}})
        job = events_stack.wait_for_job(client, job_id)
        assert (job["status"], job["reason"]) == ("failed", "invalid_data")
        lines = client.get(f"/v1/jobs/{job_id}/logs").json()["lines"]
        assert lines and all(line["attempt"] == 1 for line in lines)
        messages = "\n".join(line["message"] for line in lines)
        assert "attempt 1 of job" in messages
        failure = next(line for line in lines if line["level"] == "ERROR")
        assert f"job {job_id} failed (invalid_data): dataset mnist" in failure["message"]
        assert "Traceback" not in messages  # the user's mistake, said in words (an internal error keeps one)
        page = client.get(f"/v1/jobs/{job_id}/logs", params={"after": lines[0]["id"], "limit": 1}).json()
        assert [line["id"] for line in page["lines"]] == [lines[1]["id"]] and page["next"] == lines[1]["id"]
        assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/logs").status_code == 404


def test_logs_follow_on_the_event_stream_and_list_each_epoch(events_stack):
    with events_stack.client() as client:
        job_id = submit(client, {**SOFTMAX_SPEC, "epochs": 2})
        events, _ = read_stream(client, job_id, logs=True)
        logged = [d["message"] for k, _, d in events if k == "log"]
        assert any(m.startswith("epoch 1/2: train loss") for m in logged)
        assert any(m.startswith("epoch 2/2: train loss") for m in logged)
        assert any("succeeded" in m for m in logged), "the last lines are stored before the job is seen to end"
        stored = [line["message"] for line in client.get(f"/v1/jobs/{job_id}/logs").json()["lines"]]
        assert stored[: len(logged)] == logged
