"""adamfx: Adam and its relatives as chainable, jittable optax transforms.

Where things live: ``adamfx/_src/adam.py`` (Adam, AdamW, AMSGrad),
``adamfx/_src/moments.py`` (scale_by_moments, bias_correction, normalize),
``adamfx/_src/stages.py`` (lr_decay, weight decay), ``adamfx/_src/storage.py``
(how moments are stored: float dtypes with stochastic rounding, ``quantize.py``
8-bit blocks, ``factored.py`` Adafactor row/column statistics).
"""

from adamfx._src.adam import CONVENTIONS, adam, adamw, amsgrad
from adamfx._src.base import Chain, GradientTransformation, GradientTransformationExtraArgs, Stage, chain
from adamfx._src.factored import FactoredStorage
from adamfx._src.hyperparams import hyperparams, set_hyperparams
from adamfx._src.moments import Moments, bias_correction, max_nu, normalize, scale_by_moments
from adamfx._src.quantize import Int8Storage
from adamfx._src.stages import add_decayed_weights, lr_decay
from adamfx._src.storage import FloatStorage

__version__ = "0.1.0"

__all__ = [
    "CONVENTIONS",
    "Chain",
    "FactoredStorage",
    "FloatStorage",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "Int8Storage",
    "Moments",
    "Stage",
    "adam",
    "adamw",
    "add_decayed_weights",
    "amsgrad",
    "bias_correction",
    "chain",
    "hyperparams",
    "lr_decay",
    "max_nu",
    "normalize",
    "scale_by_moments",
    "set_hyperparams",
]
