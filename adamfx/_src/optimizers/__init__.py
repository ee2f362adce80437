"""The optimizers, one family per module, each a chain of stages; ``conventions`` is the one mechanism that turns a
convention's row ("optax", "torch", "keras") into the composition that reproduces that peer.

May import: ``adamfx._src.core``, ``adamfx._src.storage`` and ``adamfx._src.stages``.
"""

#: The names of every optimizer factory (each takes ``learning_rate`` first and ``convention=``), Adam and its
#: variants first, then by family: the one list the examples and benchmarks draw their optimizers from
#: (tests/test_registry.py checks that it names every public factory with ``convention=`` exactly once).
#:
#: >>> import adamfx, jax.numpy as jnp
#: >>> len(adamfx.OPTIMIZERS), adamfx.OPTIMIZERS[:4]
#: (22, ('adam', 'adamw', 'amsgrad', 'sgd'))
#: >>> txs = {name: getattr(adamfx, name)(learning_rate=0.5) for name in adamfx.OPTIMIZERS}  # convention="optax"
#: >>> float(adamfx.hyperparams(txs["lion"].init({"w": jnp.zeros(3)}))["learning_rate"])
#: 0.5
OPTIMIZERS: tuple[str, ...] = (
    "adam",
    "adamw",
    "amsgrad",
    "sgd",
    "adagrad",
    "rmsprop",
    "adadelta",
    "nadam",
    "nadamw",
    "adamax",
    "adamaxw",
    "radam",
    "lion",
    "lamb",
    "adabelief",
    "adopt",
    "ademamix",
    "prodigy",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "muon",
    "adafactor",
)
