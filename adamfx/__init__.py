"""adamfx: Adam and its relatives as chainable, jittable optax transforms.

Where things live: ``adamfx/_src/adam.py`` (Adam, AdamW, AMSGrad),
``adamfx/_src/moments.py`` (scale_by_moments, bias_correction, normalize),
``adamfx/_src/stages.py`` (lr_decay, weight decay),
``adamfx/_src/fused.py`` (fused), ``adamfx/_src/flat.py`` (flat_params).
"""

from adamfx._src.adam import CONVENTIONS, adam, adamw, amsgrad
from adamfx._src.base import Chain, GradientTransformation, GradientTransformationExtraArgs, Stage, chain
from adamfx._src.flat import flat_params
from adamfx._src.fused import fused
from adamfx._src.hyperparams import hyperparams, set_hyperparams
from adamfx._src.moments import Moments, bias_correction, max_nu, normalize, scale_by_moments
from adamfx._src.stages import add_decayed_weights, lr_decay

__version__ = "0.1.0"

__all__ = [
    "CONVENTIONS",
    "Chain",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "Moments",
    "Stage",
    "adam",
    "adamw",
    "add_decayed_weights",
    "amsgrad",
    "bias_correction",
    "chain",
    "flat_params",
    "fused",
    "hyperparams",
    "lr_decay",
    "max_nu",
    "normalize",
    "scale_by_moments",
    "set_hyperparams",
]
