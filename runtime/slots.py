"""The engine's slots: how many jobs of each priority it holds (runtime/batching.py's
priorities: interactive jobs while fewer than `capacity` of them run, batch jobs only in free
slots)."""

from __future__ import annotations

import threading

from contract.keys import Priority


class Slots:
    """How many jobs of each priority the engine holds. The admission loop takes slots, the
    engine thread frees them."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.active = {Priority.INTERACTIVE: 0, Priority.BATCH: 0}
        self.changed = threading.Condition()

    @property
    def total(self) -> int:
        return sum(self.active.values())

    def open_priorities(self) -> list[Priority]:
        with self.changed:
            if self.total < self.capacity:
                return [Priority.INTERACTIVE, Priority.BATCH]
            if self.active[Priority.INTERACTIVE] < self.capacity:
                return [Priority.INTERACTIVE]
            return []

    def room(self, taking: Priority) -> dict[Priority, int]:
        """Jobs of each priority there are slots for besides one of `taking` about to take
        one (a burst's admission, runtime/burst.py): interactive ones while fewer than
        `capacity` run, batch ones in whatever the total leaves."""
        with self.changed:
            interactive = self.active[Priority.INTERACTIVE] + (taking is Priority.INTERACTIVE)
            total = self.total + 1
        return {Priority.INTERACTIVE: self.capacity - interactive, Priority.BATCH: self.capacity - total}

    def take(self, priority: Priority) -> None:
        with self.changed:
            self.active[priority] += 1

    def free(self, priority: Priority) -> None:
        with self.changed:
            self.active[priority] -= 1
            self.changed.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)
