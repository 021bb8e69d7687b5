"""The worker registry in-process: entries, heartbeats, staleness, and why a queued job waits."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from service.core import db, worker_registry
from service.core.tables import Worker, utcnow

CPU = {"devices": [{"name": "cpu", "kind": "cpu", "memory_bytes": None}], "torch": "2.14.1", "cuda": None}
GPU = {
    "devices": [*CPU["devices"], {"name": "cuda:0 H200", "kind": "cuda", "memory_bytes": 150 * 2**30}],
    "torch": "2.14.1",
    "cuda": "13.0",
}


def register(settings, worker_id, queues, description=CPU):
    with db.session_scope() as session:
        worker_registry.register(session, worker_id=worker_id, host="h", pid=1, queues=queues, description=description)


def live_ids(settings):
    with db.session_scope(write=False) as session:
        return [w.id for w in worker_registry.live(session, settings=settings)]


def test_workers_stay_live_while_they_beat_and_leave_when_silent(service_env):
    register(service_env, "a", [service_env.queue])
    register(service_env, "b", [service_env.queue, service_env.gpu_queue], GPU)
    assert live_ids(service_env) == ["a", "b"]
    with db.session_scope() as session:
        session.execute(
            update(Worker)
            .where(Worker.id == "a")
            .values(last_seen=utcnow() - timedelta(seconds=service_env.worker_stale_seconds + 1))
        )
    assert live_ids(service_env) == ["b"]
    with db.session_scope() as session:
        assert worker_registry.heartbeat(session, worker_id="a")  # back: its next beat makes it live again
        worker_registry.set_current_job(session, worker_id="b", job_id="job-1")
        worker_registry.unregister(session, worker_id="b")
        assert not worker_registry.heartbeat(session, worker_id="b")  # gone: it must register again
    assert live_ids(service_env) == ["a"]


def test_a_job_waits_for_a_worker_that_serves_its_queue(service_env):
    def reason(device, *workers):
        return worker_registry.waiting_reason_for(device, list(workers), service_env)

    cpu_worker = Worker(id="c", queues=[service_env.queue])
    gpu_worker = Worker(id="g", queues=[service_env.queue, service_env.gpu_queue], devices=GPU["devices"])
    told_gpu = Worker(id="t", queues=[service_env.gpu_queue], devices=CPU["devices"])  # --queues, no GPU
    assert reason("auto") == reason("cpu") == worker_registry.NO_WORKER
    assert reason("cuda") == reason("cuda:1") == worker_registry.NO_GPU_WORKER
    assert reason("auto", cpu_worker) is None and reason("cuda", cpu_worker) == worker_registry.NO_GPU_WORKER
    assert reason("cuda", cpu_worker, gpu_worker) is None and reason("cpu", gpu_worker) is None
    assert reason("cuda", told_gpu) == worker_registry.NO_GPU_WORKER  # it gives such a job back


def test_a_distributed_job_waits_for_a_worker_that_gives_it_its_processes_or_gpus(service_env):
    def reason(device, processes, *workers, nodes=1):
        return worker_registry.waiting_reason_for(device, list(workers), service_env, processes, nodes)

    def gpus(n):
        return [{"name": "cpu", "kind": "cpu"}] + [{"name": f"cuda:{i}", "kind": "cuda"} for i in range(n)]

    two_cores = Worker(id="c", queues=[service_env.queue], devices=gpus(0), processes=2)
    four_gpus = Worker(id="g", queues=[service_env.queue, service_env.gpu_queue], devices=gpus(4), processes=8)
    assert reason("cpu", 2, two_cores) is None and reason("auto", 2, two_cores) is None
    assert reason("cpu", 4, two_cores) == reason("auto", 4, two_cores) == "no_worker_with_4_processes"
    assert reason("cuda", 2, two_cores) == worker_registry.NO_GPU_WORKER
    assert reason("cuda", 4, two_cores, four_gpus) is None
    assert reason("cuda", 8, two_cores, four_gpus) == "no_worker_with_8_gpus"
    assert reason("cpu", 8, two_cores, four_gpus) is None  # the GPU worker's CPU gives 8
    assert reason("auto", 8, four_gpus) is None and reason("auto", 9, four_gpus) == "no_worker_with_9_processes"
    assert reason("cpu", 2, two_cores, four_gpus, nodes=2) is None
    assert worker_registry.waiting_reason_for("cpu", [two_cores, four_gpus], service_env, 4, 2) == (
        "no_2_workers_with_4_processes"
    )
    assert worker_registry.processes_of({"distributed": {"nproc_per_node": 3}}) == 3
    assert worker_registry.processes_of({"device": "cpu"}) == worker_registry.processes_of(None) == 1


def test_every_waiting_reason_is_said_in_words_with_what_lets_the_job_start(service_env):
    describe = worker_registry.describe_waiting
    assert describe(None) is None
    assert "start one with `trainyard worker`" in describe(worker_registry.NO_WORKER)
    assert "GPU queue" in describe(worker_registry.NO_GPU_WORKER)
    assert describe("no_worker_with_4_processes") == (
        "it trains on 4 processes and no live worker gives one job 4 processes (TRAINYARD_MAX_JOB_PROCESSES)"
    )
    assert describe("no_worker_with_8_gpus") == "it trains on 8 processes and no live worker gives one job 8 GPUs"
    more = (
        ": start another worker (`trainyard worker`, on a machine with the same database, broker and store), "
        "or lower distributed.nnodes"
    )
    assert describe("no_2_workers_with_1_gpus") == (
        "it trains on 2 machines at once and fewer than 2 live workers each give one job 1 GPU" + more
    )
    assert describe("no_3_workers_with_1_processes") == (  # every worker gives one: more workers, not more processes
        "it trains on 3 machines at once and fewer than 3 live workers each give one job 1 process" + more
    )
    assert describe("something_new") == "something_new"  # a reason this code does not know is still shown
    # What waiting_reason_for answers, said in words, and known as short of capacity.
    two_cores = Worker(id="c", queues=[service_env.queue], devices=[{"name": "cpu", "kind": "cpu"}], processes=2)
    short = worker_registry.waiting_reason_for("cpu", [two_cores], service_env, 4, 2)
    assert worker_registry.short_of_capacity(short) and describe(short) == (
        "it trains on 2 machines at once and fewer than 2 live workers each give one job 4 processes "
        "(TRAINYARD_MAX_JOB_PROCESSES)" + more
    )
    unserved = worker_registry.waiting_reason_for("cuda", [two_cores], service_env)
    assert not worker_registry.short_of_capacity(unserved) and "GPU queue" in describe(unserved)


def test_devices_are_described_without_touching_cuda_here(monkeypatch):
    description = worker_registry.probe_devices()
    assert description["devices"][0] == {"name": "cpu", "kind": "cpu", "memory_bytes": None}
    assert description["torch"] and worker_registry.has_cuda(GPU) and not worker_registry.has_cuda(CPU)
    # As a machine with a GPU driver probes: in a process of its own, which finds what this one does.
    monkeypatch.setattr(worker_registry, "GPU_DEVICE_NODES", ("/",))
    assert worker_registry.probe_devices() == description


def test_a_restarted_worker_under_the_same_name_is_busy_with_nothing(service_env):
    register(service_env, "w@h", ["q"])
    with db.session_scope() as session:
        worker_registry.set_current_job(session, worker_id="w@h", job_id="0" * 36)
        worker_registry.register(session, worker_id="w@h", host="h", pid=1, queues=["q"], description=CPU)
        assert session.get(Worker, "w@h").current_job == "0" * 36  # the same process registering again
        worker_registry.register(session, worker_id="w@h", host="h", pid=2, queues=["q"], description=CPU)
        assert session.get(Worker, "w@h").current_job is None
