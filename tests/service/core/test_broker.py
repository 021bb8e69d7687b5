"""The broker client on the embedded broker (kombu's SQL transport on a real SQLite file)."""

from __future__ import annotations

from service.core import broker


def test_queue_depth_gives_back_its_database_connections(service_env):
    """kombu's SQL transport leaves a session open per channel; queue_depth must end it itself
    rather than wait for the garbage collector (which the API runs rarely)."""
    import gc

    from kombu.transport.sqlalchemy import Channel

    gc.disable()
    try:
        for _ in range(20):  # more than the transport's pool holds (5 + 10 overflow)
            assert broker.queue_depth(service_env.queue) == 0
        checked_out = sum(engine.pool.checkedout() for engine, _ in Channel._engines.values())
    finally:
        gc.enable()
    assert checked_out == 0


def test_a_replacement_pool_process_has_time_to_import_the_training_stack(service_env):
    """Celery kills a pool process that has not reported up within 4 s; a replacement for a
    crashed one imports torch first, which took longer on a loaded machine, and the worker then
    killed every replacement and never ran another job (tests/e2e/test_reliability.py caught it)."""
    assert broker.make_celery(service_env).conf.worker_proc_alive_timeout >= 60
