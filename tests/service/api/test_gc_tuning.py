"""The API's garbage collector settings: rare young collections, yet cycles still freed on a clock."""

import asyncio
import gc
import weakref

from service.api import gc_tuning


class Node:
    pass


def test_cycles_are_freed_on_the_clock_though_the_threshold_is_high():
    saved = gc.get_threshold()
    try:
        gc_tuning.tune()
        assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD and gc.get_freeze_count() > 0

        async def run() -> tuple[bool, bool]:
            node = Node()
            node.itself = node  # a cycle: only the collector can free it
            ref = weakref.ref(node)
            del node
            await asyncio.sleep(0.3)
            alive_without_collector = ref() is not None
            collector = asyncio.get_running_loop().create_task(gc_tuning.collect_periodically(0.05))
            await asyncio.sleep(0.3)
            collector.cancel()
            return alive_without_collector, ref() is None

        alive_without_collector, freed = asyncio.run(run())
        assert alive_without_collector, "a young collection ran anyway; the test proves nothing"
        assert freed
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()
