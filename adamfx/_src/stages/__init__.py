"""The stages optimizers are chained from, one concept per module: the moments (moments), where eps goes (eps), other
forms of the second moment (moment_forms), bias-correction refinements (corrections), the momentum buffer (momentum),
the learning rate (learning_rate), weight decay (weight_decay), and stages on the raw gradient (clipping).

May import: ``adamfx._src.core`` and ``adamfx._src.storage``.
"""
