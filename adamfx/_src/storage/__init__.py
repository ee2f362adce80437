"""How a moment is kept between steps: the :class:`Storage` protocol (protocol), float storage with stochastic
rounding (rounding), 8-bit block-wise storage (int8) and Adafactor's factored second moment (factored).

May import: ``adamfx._src.core``.
"""
