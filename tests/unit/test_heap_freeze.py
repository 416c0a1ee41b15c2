"""The drain freezes the heap once per process (``drain.freeze_heap``): what existed before is
left out of the collector's passes, and what is made afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from kafka_mongo_etl import drain


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_the_heap_is_frozen_once_and_later_garbage_is_still_collected(monkeypatch) -> None:
    monkeypatch.setattr(drain, "_heap_frozen", False)
    drain.freeze_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    drain.freeze_heap()  # a second drain in the same process leaves the heap as it is
    assert gc.get_freeze_count() == frozen
    # A reference cycle made after the freeze is garbage the collector still finds.
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
