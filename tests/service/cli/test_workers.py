"""How the CLI starts workers: which queues they serve, and one worker per GPU."""

from __future__ import annotations

import pytest
import typer

from service.cli import main
from service.core import worker_registry
from service.core.settings import Settings


def test_queues_given_win_and_cuda_decides_the_default(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path)
    assert main.worker_queues(settings, "a,b") == ["a", "b"]
    assert main.worker_queues(Settings(home=tmp_path, worker_queues="x")) == ["x"]
    monkeypatch.setattr(worker_registry, "may_have_gpu", lambda: True)  # a GPU driver, for the probe
    monkeypatch.setattr(worker_registry, "probe_devices", lambda: {"devices": [{"kind": "cpu"}]})
    assert main.worker_queues(settings) == [settings.queue]
    monkeypatch.setattr(worker_registry, "probe_devices", lambda: {"devices": [{"kind": "cpu"}, {"kind": "cuda"}]})
    assert main.worker_queues(settings) == [settings.queue, settings.gpu_queue]
    monkeypatch.setattr(worker_registry, "may_have_gpu", lambda: False)  # no driver: nothing to probe
    assert main.worker_queues(settings) == [settings.queue]


def test_one_worker_per_gpu_each_seeing_only_its_own(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path)
    monkeypatch.setattr(worker_registry, "may_have_gpu", lambda: True)
    monkeypatch.setattr(
        worker_registry,
        "probe_devices",
        lambda: {"devices": [{"kind": "cpu"}, {"kind": "cuda"}, {"kind": "cuda"}]},
    )
    assert main.gpu_indices("all") == [0, 1] and main.gpu_indices("1,3") == [1, 3]
    workers = main.gpu_workers(settings, [0, 1], [settings.queue, settings.gpu_queue])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in workers.values()] == ["0", "1"]
    commands = [command for command, _ in workers.values()]
    assert all(f"{settings.queue},{settings.gpu_queue}" in command for command in commands)
    assert len({command[command.index("--hostname") + 1] for command in commands}) == 2
    with pytest.raises(typer.BadParameter):
        main.gpu_indices("first")
    monkeypatch.setattr(worker_registry, "probe_devices", lambda: {"devices": [{"kind": "cpu"}]})
    with pytest.raises(typer.BadParameter, match="no CUDA device"):
        main.gpu_indices("all")
    monkeypatch.setattr(worker_registry, "may_have_gpu", lambda: False)  # no driver: not even probed
    monkeypatch.setattr(worker_registry, "probe_devices", lambda: pytest.fail("probed without a GPU driver"))
    with pytest.raises(typer.BadParameter, match="no CUDA device"):
        main.gpu_indices("all")
