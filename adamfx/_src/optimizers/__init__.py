"""The optimizers, one family per module, each a chain of stages; ``conventions`` is the one mechanism that turns a
convention's row ("optax", "torch", "keras") into the composition that reproduces that peer.

May import: ``adamfx._src.core``, ``adamfx._src.storage`` and ``adamfx._src.stages``.
"""
