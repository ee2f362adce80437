"""The foundation: the stage protocol and ``chain`` (base), validation and the hyperparameter range table (checks),
frozen pytrees for masks and labels (frozen), hyperparameters held in the state (hyperparams), and the per-leaf
dtype helpers (numerics).

May import: jax, optax, numpy and the standard library only -- nothing else from ``adamfx._src``.
"""
