"""What a training loop needs around an optimizer: optax's wrappers made value-comparable (wrappers), a moving
average of the params (ema), checkpoint checks (checkpoint), vectorized sweeps (sweep) and Keras configs
(keras_config).

May import: everything in ``adamfx._src`` except ``optimizers`` (a training tool works with any transform).
"""
