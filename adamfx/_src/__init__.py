"""adamfx's implementation, by role (the public API is ``adamfx.<name>``; nothing here is imported by users).

The packages form layers; each may import only the layers above it in this list:

- ``core``: the stage protocol, ``chain``, validation, hyperparameters in the state, dtype helpers.
- ``storage``: how moments are kept between steps (float with stochastic rounding, int8, factored).
- ``stages``: the stages optimizers are chained from (moments, corrections, momentum, lr, weight decay, clipping).
- ``optimizers``: the optimizers, one family per module, and the conventions mechanism.
- ``execution``: running a transform on flat buffers (``fused``, ``flat_params``) and sharded (ZeRO-1).
- ``training``: wrappers, EMA, checkpoint checks, sweeps and Keras configs.
"""
