"""adamfx: Adam and its relatives as chainable, jittable optax transforms.

Where things live (``adamfx/_src/``, by role; each package's docstring says more):
``optimizers/`` (``adam.py``: Adam, AdamW, AMSGrad; one module per family; ``conventions.py``),
``stages/`` (``moments.py``: scale_by_moments, bias_correction, normalize; ``learning_rate.py``, ``weight_decay.py``;
corrections, momentum, other second moments, clipping), ``storage/`` (float with stochastic rounding,
int8, factored), ``execution/`` (fused, flat_params, sharding), ``training/`` (wrappers, EMA,
checkpoint checks, sweeps, Keras configs) and ``core/`` (the stage protocol, checks, hyperparameters).
"""

from adamfx._src.core.base import Chain, GradientTransformation, GradientTransformationExtraArgs, Stage, chain
from adamfx._src.core.checks import AdamfxWarning
from adamfx._src.core.hyperparams import groups, hyperparams, set_hyperparams
from adamfx._src.execution.flat import flat_params
from adamfx._src.execution.fused import fused
from adamfx._src.execution.sharding import bytes_per_device, init_sharded, state_shardings
from adamfx._src.optimizers.adagrad import adagrad
from adamfx._src.optimizers.adam import CONVENTIONS, adam, adamw, amsgrad
from adamfx._src.optimizers.adamax import adamax, adamaxw
from adamfx._src.optimizers.nadam import nadam, nadamw
from adamfx._src.optimizers.radam import radam
from adamfx._src.optimizers.rmsprop import adadelta, rmsprop
from adamfx._src.optimizers.sgd import sgd
from adamfx._src.stages.clipping import clip_by_global_norm, clip_by_norm_per_leaf, clip_by_value, negate, unscale_loss
from adamfx._src.stages.corrections import nesterov_momentum, rectify
from adamfx._src.stages.learning_rate import lr_decay
from adamfx._src.stages.moment_forms import accumulate_squares, center, infinity_norm, update_rms
from adamfx._src.stages.moments import Moments, bias_correction, max_nu, normalize, scale_by_moments
from adamfx._src.stages.momentum import trace
from adamfx._src.stages.weight_decay import add_decayed_weights, decoupled_weight_decay
from adamfx._src.storage.factored import FactoredStorage
from adamfx._src.storage.int8 import Int8Storage
from adamfx._src.storage.protocol import FloatStorage, Storage
from adamfx._src.training.checkpoint import check_compatible, restore_state
from adamfx._src.training.ema import EmaState, ema_params, with_ema
from adamfx._src.training.sweep import sweep, sweep_params
from adamfx._src.training.wrappers import apply_if_finite, exclude_bias_and_norm, masked, multi_steps, partition

__version__ = "0.1.0"

__all__ = [
    "CONVENTIONS",
    "AdamfxWarning",
    "Chain",
    "EmaState",
    "FactoredStorage",
    "FloatStorage",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "Int8Storage",
    "Moments",
    "Stage",
    "Storage",
    "accumulate_squares",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "add_decayed_weights",
    "amsgrad",
    "apply_if_finite",
    "bias_correction",
    "bytes_per_device",
    "center",
    "chain",
    "check_compatible",
    "clip_by_global_norm",
    "clip_by_norm_per_leaf",
    "clip_by_value",
    "decoupled_weight_decay",
    "ema_params",
    "exclude_bias_and_norm",
    "flat_params",
    "fused",
    "groups",
    "hyperparams",
    "infinity_norm",
    "init_sharded",
    "lr_decay",
    "masked",
    "max_nu",
    "multi_steps",
    "nadam",
    "nadamw",
    "negate",
    "nesterov_momentum",
    "normalize",
    "partition",
    "radam",
    "rectify",
    "restore_state",
    "rmsprop",
    "scale_by_moments",
    "set_hyperparams",
    "sgd",
    "state_shardings",
    "sweep",
    "sweep_params",
    "trace",
    "unscale_loss",
    "update_rms",
    "with_ema",
]
