"""The API on several processes: they share the work, the metrics, the readiness and one reaper;
and under cache thrash every predict is answered within its deadline."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.datagen import png_bytes
from tests.support.servers import Stack, wait_until
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data_dir):
    """A worker and an API of two processes on the embedded default, with two trained models; the
    API writes an access log."""
    with Stack(
        home=tmp_path_factory.mktemp("multi"),
        data_dir=data_dir,
        extra_env={"TRAINYARD_API_WORKERS": "2", "TRAINYARD_ACCESS_LOG": "true"},
    ) as stack:
        with stack.client() as client:
            jobs = [submit(client, {**SOFTMAX_SPEC, "epochs": 1, "seed": seed}) for seed in (1, 2)]
            for job_id in jobs:
                assert stack.wait_for_job(client, job_id)["status"] == "succeeded"
            assert client.post("/v1/models", json={"name": "multi", "job_id": jobs[0]}).status_code == 201
        yield stack, jobs


def requests_counted(url: str, route: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(
        s.value
        for s in families["trainyard_http_requests"].samples
        if s.name.endswith("_total") and s.labels["route"] == route
    )


def test_both_processes_answer_and_metrics_count_them_all(two_processes):
    stack, _ = two_processes
    seen, sent = set(), 0
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        with httpx.Client(base_url=stack.url) as fresh:  # a new connection may land on either process
            seen.add(fresh.get("/healthz").json()["pid"])
        sent += 1
    assert len(seen) == 2, f"only process {seen} answered {sent} requests"
    for _ in range(50):
        with httpx.Client(base_url=stack.url) as fresh:
            fresh.get("/healthz")
    sent += 50
    wait_until(
        lambda: requests_counted(stack.url, "/healthz") == sent,
        timeout=10,
        what=f"/metrics to count all {sent} /healthz requests of both processes",
    )
    # TRAINYARD_ACCESS_LOG: a line per request, from both processes
    assert stack.log("api").count('"GET /healthz HTTP/1.1" 200') == sent


def memory_kb(pid: int) -> dict[str, int]:
    """The process's /proc/<pid>/smaps_rollup figures, in kB."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return {name: int(rest.split()[0]) for name, _, rest in (line.partition(":") for line in fh) if rest.strip()}


def command_line(pid: int) -> str:
    """What `ps` shows as the process's command."""
    with open(f"/proc/{pid}/cmdline") as fh:
        return fh.read().replace("\0", " ").strip()


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[1])


def test_the_processes_share_what_the_fork_server_imported(two_processes):
    """torch and the other libraries are imported once, by the fork server the processes are
    forked from, and their pages are shared: a process's proportional share of its anonymous memory
    is far below what it has (two processes importing torch apiece share next to none of it). `ps`
    names the fork server, and shows each process as the command that would start it alone."""
    stack, _ = two_processes
    pids = stack.api_server_pids()
    assert len(pids) == 2
    fork_servers = {parent_of(pid) for pid in pids}
    assert [command_line(p) for p in fork_servers] == ["trainyard api fork server (service.api.preload)"]
    for pid in pids:
        assert command_line(pid).endswith(" -m service.api.server"), command_line(pid)
        memory = memory_kb(pid)
        shared = memory["Anonymous"] - memory["Pss_Anon"]
        assert shared > 100 * 1024, f"API process {pid} shares {shared} kB of its anonymous memory: {memory}"


def test_one_process_runs_the_reaper_and_readiness_speaks_for_all(two_processes):
    stack, _ = two_processes
    assert httpx.get(f"{stack.url}/readyz").json()["checks"]["models"] == "ok"
    run_dir = stack.home / "run" / f"api-{stack.port}"
    assert len(list(run_dir.glob("api-*.json"))) == 2
    wait_until(lambda: "now runs the reaper" in stack.log("api"), timeout=20, what="a reaper to start")
    time.sleep(2)  # several reaper intervals: the other process must still not have taken the role
    assert stack.log("api").count("now runs the reaper") == 1


def test_readiness_waits_for_every_process_to_preload(two_processes):
    stack, _ = two_processes
    second = Stack(
        home=stack.home,
        data_dir=stack.data_dir,
        with_worker=False,
        extra_env={"TRAINYARD_API_WORKERS": "2", "TRAINYARD_PRELOAD_MODELS": "multi,missing-model"},
    )
    second._spawn("api", ["-m", "service.cli.main", "api"])
    try:
        wait_until(
            lambda: "missing-model" in httpx.get(f"{second.url}/readyz").json()["checks"]["models"],
            timeout=60,
            what="both processes to report their preload",
        )
        assert httpx.get(f"{second.url}/readyz").status_code == 503
    finally:
        second.stop()


def test_cache_thrash_answers_every_predict_within_its_deadline(two_processes):
    stack, jobs = two_processes
    thrash = Stack(
        home=stack.home,
        data_dir=stack.data_dir,
        with_worker=False,
        extra_env={
            "TRAINYARD_API_WORKERS": "1",
            "TRAINYARD_MODEL_CACHE_SIZE": "1",
            "TRAINYARD_PREDICT_TIMEOUT_MS": "3000",
        },
    )
    thrash._spawn("api", ["-m", "service.cli.main", "api"])
    image = png_bytes(3, seed=5)
    try:
        wait_until(lambda: httpx.get(f"{thrash.url}/readyz").status_code == 200, timeout=60, what="the API")

        def client_loop(index: int) -> list[tuple[int, float, str | None]]:
            results = []
            with httpx.Client(base_url=thrash.url, timeout=30) as client:
                for n in range(33):
                    started = time.monotonic()
                    answer = client.post(
                        f"/v1/models/job:{jobs[(index + n) % 2]}/predict",
                        content=image,
                        headers={"content-type": "image/png"},
                    )
                    results.append((answer.status_code, time.monotonic() - started, answer.headers.get("retry-after")))
            return results

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = [r for rs in pool.map(client_loop, range(32)) for r in rs]
    finally:
        thrash.stop()
    assert len(results) >= 1000
    statuses = {status for status, _, _ in results}
    assert statuses <= {200, 503}, statuses
    assert all(retry for status, _, retry in results if status == 503)
    assert max(seconds for _, seconds, _ in results) < 3 + 2  # the deadline, and a margin for a busy machine
    assert sum(status == 200 for status, _, _ in results) > len(results) / 2


def test_a_second_api_on_a_port_in_use_refuses_to_start(two_processes):
    stack, _ = two_processes
    second = stack.cli("api", timeout=60)  # same port; SO_REUSEPORT must not let it join silently
    assert second.returncode == 1 and "already in use" in second.stderr
    assert httpx.get(f"{stack.url}/healthz").status_code == 200


def test_an_api_process_that_dies_is_replaced(two_processes):
    """Killed (say, by the kernel's OOM killer), an API process is started again by the supervisor,
    and readiness waits for the new one."""
    stack, _ = two_processes

    def api_pids() -> set[int]:
        return set(stack.api_server_pids())

    before = api_pids()
    assert len(before) == 2
    victim = min(before)
    metrics = stack.home / "run" / f"api-{stack.port}" / "metrics"
    assert list(metrics.glob(f"gauge_live*_{victim}.db"))  # e.g. the models it holds
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(api_pids()) == 2 and victim not in api_pids(),
        timeout=30,
        what=f"a new API process in place of {victim}\n{stack.logs()}",
    )
    wait_until(
        lambda: httpx.get(f"{stack.url}/readyz", timeout=2).status_code == 200,
        timeout=60,
        what=f"readiness with the new process\n{stack.logs()}",
    )
    assert "was killed by SIGKILL; restarting it" in stack.log("api")
    assert httpx.get(f"{stack.url}/readyz").json()["checks"]["models"] == "ok"
    assert not list(metrics.glob(f"gauge_live*_{victim}.db"))  # its gauges no longer count
