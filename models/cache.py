"""One thread-safe least-recently-used map for everything trainyard keeps decoded or loaded."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """At most `size` values; the least recently used goes first, and `on_evict` hears of it."""

    def __init__(self, size: int, on_evict: Callable[[V], None] | None = None):
        self.size = size
        self.on_evict = on_evict
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: V) -> V:
        """Store a value unless another thread stored one first; returns the value kept."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            self._items[key] = value
            evicted = [self._items.popitem(last=False)[1] for _ in range(len(self._items) - self.size)]
        for old in evicted:
            if self.on_evict is not None:
                self.on_evict(old)
        return value

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value, or load() stored; loading runs outside the lock (two threads may both
        load a missing key, and the first to finish wins)."""
        found = self.get(key)
        return found if found is not None else self.put(key, load())

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)
