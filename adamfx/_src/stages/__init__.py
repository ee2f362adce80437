"""The stages optimizers are chained from, one concept per module: the moments (moments), other forms of the second
moment (moment_forms), bias-correction refinements (corrections), momentum buffers (momentum), the learning rate and
weight decay (lr_and_decay), stages on the raw gradient (clipping), and Muon's matrix stages (orthogonalize).

May import: ``adamfx._src.core`` and ``adamfx._src.storage``.
"""
