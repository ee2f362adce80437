"""Counting XLA compilations, for tests that promise "no recompilation".

``compiles()`` listens to JAX's own monitoring event for backend compilations
(the event ``jax.config.jax_log_compiles`` logs), so it counts every program
XLA builds in the block, whoever jits it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == _EVENT:
            self.count += 1


@contextlib.contextmanager
def compiles() -> Iterator[Counter]:
    """``with compiles() as c: ...``; ``c.count`` is the number of XLA compilations so far."""
    counter = Counter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(counter)
