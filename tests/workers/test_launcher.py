"""The address a worker that leads a job on several machines gives the others."""

import ipaddress
import logging
import socket

from models.spec.job import JobSpec
from workers.launcher import own_address


def loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def test_a_host_name_on_loopback_gives_the_address_the_broker_is_reached_from(monkeypatch, caplog):
    """/etc/hosts often maps the host name to 127.0.1.1: the rendezvous was advertised there, where
    no other machine reaches it."""
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    with caplog.at_level(logging.WARNING, logger="workers.launcher"):
        assert loopback(own_address("redis://127.0.0.1:6379/0"))  # a broker here: every worker is here
        assert loopback(own_address("sqla+sqlite:////tmp/broker.db"))
        assert caplog.text == ""
        # A broker elsewhere (a documentation address; routed as any other): this machine's
        # address on the way there, or a warning that names the setting where there is no route.
        far = own_address("redis://203.0.113.7:6379/0")
    assert not loopback(far) or "set TRAINYARD_WORKER_ADDRESS" in caplog.text, (far, caplog.text)


def test_a_host_name_that_resolves_elsewhere_is_taken_as_it_is(monkeypatch):
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "198.51.100.4")
    assert own_address("redis://127.0.0.1:6379/0") == "198.51.100.4"


def test_a_ranks_line_names_its_rank_once(caplog):
    """The lines of ranks other than 0 are prefixed with their rank, unless they name it already
    ("rank 1: rank 1: another process of the job went away" was logged)."""
    import io
    import json

    from workers.launcher import _relay
    from workers.rank import LOG_LINE

    def line(rank: int, message: str) -> str:
        record = {"rank": rank, "level": "WARNING", "logger": "trainyard.test", "message": message}
        return LOG_LINE + json.dumps(record) + "\n"

    lines = [
        line(1, "rank 1: another process of the job went away"),
        line(1, "slow batch"),
        line(1, "rank 10 is slow"),  # another rank named: its own still said
        line(0, "epoch 2"),
    ]
    with caplog.at_level(logging.INFO):
        _relay(io.StringIO("".join(lines) + "I torchrun says\n"), logging.getLogger("trainyard.ranks"))
    assert [r.getMessage() for r in caplog.records] == [
        "rank 1: another process of the job went away",
        "rank 1: slow batch",
        "rank 1: rank 10 is slow",
        "epoch 2",
        "torchrun: I torchrun says",
    ]


def test_a_ranks_wait_for_the_store_reaches_the_jobs_heartbeat(service_env, tmp_path, monkeypatch):
    """A distributed job's ranks write to the store from their own processes: the worker's
    heartbeat, which said store_unavailable only for its own waits, showed such a job running."""
    from datetime import timedelta

    from service.core.storage import Waiting, get_storage
    from service.core.tables import utcnow
    from workers import launcher, runner
    from workers.rank import RunFolder, StoreWaitReport

    folder = RunFolder(tmp_path / "ranks")
    folder.path.mkdir()
    monkeypatch.setattr(launcher, "_SUPERVISED", {folder})  # as run_group has it while the ranks run
    report = StoreWaitReport(folder, 1, interval=60)  # ticked by hand below
    report.start()
    since = utcnow()
    with monkeypatch.context() as in_the_rank:  # the rank's process, whose storage retries a write
        waiting = Waiting("write epoch 3's checkpoint", since, since + timedelta(seconds=60), "connection refused")
        in_the_rank.setattr(get_storage(), "waiting", lambda: waiting)
        report.tick()
    said = runner.waiting_for_store()  # the worker's: its own storage waits for nothing
    assert said.startswith(f"rank 1: the store {get_storage().url} is unavailable (connection refused)"), said
    assert "to write epoch 3's checkpoint" in said and runner.waiting_for_store(own_only=True) is None
    report.tick()  # the rank's storage no longer waits
    assert runner.waiting_for_store() is None
    folder.write_waiting(0, "rank 0: the store ...")
    report.stop()  # a rank that ends takes its word back
    assert runner.waiting_for_store() == "rank 0: the store ..." and not (folder.path / "waiting.1").exists()


def test_a_joined_machines_ranks_say_on_the_job_what_they_wait_for_and_the_leader_leaves_it(
    service_env, tmp_path, monkeypatch
):
    """Only the leading worker's beat spoke for the job: a joined machine whose ranks retried the
    store left the job looking well while the whole group waited for them."""
    from service.core import db, jobs, worker_registry
    from service.core.settings import get_settings
    from service.core.tables import Job
    from tests.support.specs import SOFTMAX_SPEC
    from workers import launcher
    from workers.rank import RunFolder
    from workers.runner import JobControl

    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=JobSpec.model_validate(SOFTMAX_SPEC), task="classification").id
    with db.session_scope() as session:
        attempt = jobs.claim_job(session, job_id=job_id, worker="lead", lease_seconds=30, max_attempts=3).attempt

    def said() -> tuple[str | None, str | None]:
        with db.session_scope() as session:
            job = session.get(Job, job_id)
            reason = worker_registry.waiting_reasons(session, jobs=[job], settings=get_settings()).get(job_id)
            return job.stalled, reason

    folder = RunFolder(tmp_path / "joined")
    folder.path.mkdir()
    monkeypatch.setattr(launcher, "_SUPERVISED", {folder})  # the joined machine's ranks
    watch = launcher.AttemptWatch(job_id, attempt, interval=60)  # ticked by hand
    leader = JobControl(job_id, attempt, interval=60, longest_wait=60)
    folder.write_waiting(2, "rank 2: the store s3://x is unavailable")
    joined = "rank 2: the store s3://x is unavailable"

    def leader_beat(waiting: str | None) -> None:  # the leading worker's own ranks and storage
        with monkeypatch.context() as on_the_leader:
            on_the_leader.setattr("workers.runner.waiting_for_store", lambda: waiting)
            leader.tick()

    watch.tick()
    assert said() == (joined, "store_unavailable")
    leader_beat(None)
    assert said()[0] == joined  # the leader leaves the joined machine's word
    leader_beat("the leader waits too")
    assert said()[0] == "the leader waits too"
    leader_beat(None)  # its wait over, it takes back its word
    assert said() == (None, None)
    watch.tick()  # the joined ranks, still waiting, say so again at their next beat
    assert said()[0] == joined
    leader.stalled = "the leader waits too"  # as if its beat that took it back had not got through
    leader_beat(None)
    assert said()[0] == joined  # not its word: it stays
    (folder.path / "waiting.2").unlink()
    watch.tick()  # their wait over, they take it back
    assert said() == (None, None)


def test_a_failover_or_ipv6_broker_url_gives_an_address_too(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    assert loopback(own_address("redis://127.0.0.1:6379;redis://127.0.0.2:6379/0"))  # kombu's failover list
    assert loopback(own_address("redis://[::1]:6379/0"))


def test_torchrun_on_several_machines_is_told_the_address_the_others_reach_this_one_at(
    service_env, tmp_path, monkeypatch
):
    """Without --local-addr torch advertises this host's name, which /etc/hosts often maps to loopback."""
    from models.spec.job import JobSpec
    from tests.support.specs import SOFTMAX_SPEC
    from workers.launcher import torchrun_command
    from workers.rank import RunFolder

    monkeypatch.setattr(socket, "gethostbyname", lambda name: "198.51.100.4")
    spec = JobSpec.model_validate({**SOFTMAX_SPEC, "distributed": {"nproc_per_node": 1, "nnodes": 2}})
    joining = torchrun_command(spec, "job", 1, RunFolder(tmp_path), "203.0.113.9:29400", False)
    assert "--local-addr=198.51.100.4" in joining, joining  # its own
    leading = torchrun_command(spec, "job", 1, RunFolder(tmp_path), "198.51.100.5:29400", True)
    assert "--local-addr=198.51.100.5" in leading, leading  # the rendezvous's, found once
