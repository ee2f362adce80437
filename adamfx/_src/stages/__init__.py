"""The stages optimizers are chained from, one concept per module: the moments (moments), where eps goes (eps), other
forms of the second moment (moment_forms, belief, factored_rms), bias-correction refinements (corrections), momentum
buffers (momentum, update_average, slow_ema, sign), the learning rate (learning_rate, relative_step), weight decay
(weight_decay, decay_first), stages on the raw gradient (clipping), ADOPT's decorrelated normalisation (decorrelated),
update clipping and trust ratios (update_clipping, trust_ratio), the Cautious mask (cautious), Schedule-Free averaging
(schedule_free), Prodigy's distance estimate (distance) and Muon's matrix stages (orthogonalize).

May import: ``adamfx._src.core`` and ``adamfx._src.storage``.
"""
