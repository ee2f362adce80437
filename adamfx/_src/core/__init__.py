"""The foundation: the stage protocol and ``chain`` (base), validation and the hyperparameter range table (checks),
frozen pytrees for masks and labels (frozen), hyperparameters held in the state (hyperparams), the per-leaf
dtype helpers (numerics) and per-leaf functions traced once per leaf shape (tracing).

May import: jax, optax, numpy and the standard library only -- nothing else from ``adamfx._src``.
"""
