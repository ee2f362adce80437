"""Counting XLA compilations, for tests that promise "no recompilation".

``compiles()`` listens to JAX's own monitoring event for backend compilations
(the event ``jax.config.jax_log_compiles`` logs), so it counts every program
XLA builds in the block, whoever jits it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import optax

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


def static_tx_step(traces: list):
    """A jitted train step taking the optimizer as a static argument; appends to ``traces`` when traced."""

    def step(tx, params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, static_argnums=0)
