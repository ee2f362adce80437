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
from adamfx._src.optimizers import OPTIMIZERS
from adamfx._src.optimizers.adabelief import adabelief
from adamfx._src.optimizers.adafactor import adafactor
from adamfx._src.optimizers.adagrad import adagrad
from adamfx._src.optimizers.adam import CONVENTIONS, adam, adamw, amsgrad
from adamfx._src.optimizers.adamax import adamax, adamaxw
from adamfx._src.optimizers.ademamix import ademamix
from adamfx._src.optimizers.adopt import adopt
from adamfx._src.optimizers.lamb import lamb
from adamfx._src.optimizers.lion import lion
from adamfx._src.optimizers.muon import MuonSplit, muon
from adamfx._src.optimizers.nadam import nadam, nadamw
from adamfx._src.optimizers.prodigy import prodigy
from adamfx._src.optimizers.radam import radam
from adamfx._src.optimizers.rmsprop import adadelta, rmsprop
from adamfx._src.optimizers.schedule_free import schedule_free_adamw, schedule_free_sgd
from adamfx._src.optimizers.sgd import sgd
from adamfx._src.stages.belief import scale_by_belief
from adamfx._src.stages.cautious import cautious, cautious_mask
from adamfx._src.stages.clipping import clip_by_global_norm, clip_by_norm_per_leaf, clip_by_value, negate, unscale_loss
from adamfx._src.stages.corrections import nesterov_momentum, rectify
from adamfx._src.stages.decay_first import decay_first
from adamfx._src.stages.decorrelated import (
    clip_by_step,
    moving_average,
    normalize_by_previous,
    quarter_power,
)
from adamfx._src.stages.distance import distance_estimate
from adamfx._src.stages.factored_rms import scale_by_factored_rms
from adamfx._src.stages.learning_rate import lr_decay
from adamfx._src.stages.moment_forms import accumulate_squares, center, infinity_norm, update_rms
from adamfx._src.stages.moments import Moments, bias_correction, max_nu, normalize, scale_by_moments
from adamfx._src.stages.momentum import trace
from adamfx._src.stages.orthogonalize import nesterov_lerp, orthogonalize, scale_by_shape
from adamfx._src.stages.relative_step import relative_step_size
from adamfx._src.stages.schedule_free import ScheduleFreeState, schedule_free
from adamfx._src.stages.sign import lion_momentum, sign
from adamfx._src.stages.slow_ema import slow_ema
from adamfx._src.stages.trust_ratio import trust_ratio
from adamfx._src.stages.update_average import ema_of_updates
from adamfx._src.stages.update_clipping import clip_by_block_rms
from adamfx._src.stages.weight_decay import add_decayed_weights, decoupled_weight_decay
from adamfx._src.storage.factored import FactoredStorage
from adamfx._src.storage.int8 import Int8Storage
from adamfx._src.storage.protocol import FloatStorage, Storage
from adamfx._src.training.checkpoint import check_compatible, restore_state
from adamfx._src.training.ema import EmaState, ema_params, with_ema
from adamfx._src.training.schedule_free_eval import schedule_free_eval_params
from adamfx._src.training.sweep import sweep, sweep_params
from adamfx._src.training.wrappers import apply_if_finite, exclude_bias_and_norm, masked, multi_steps, partition

__version__ = "0.1.0"

__all__ = [
    "CONVENTIONS",
    "OPTIMIZERS",
    "AdamfxWarning",
    "Chain",
    "EmaState",
    "FactoredStorage",
    "FloatStorage",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "Int8Storage",
    "Moments",
    "MuonSplit",
    "ScheduleFreeState",
    "Stage",
    "Storage",
    "accumulate_squares",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "add_decayed_weights",
    "ademamix",
    "adopt",
    "amsgrad",
    "apply_if_finite",
    "bias_correction",
    "bytes_per_device",
    "cautious",
    "cautious_mask",
    "center",
    "chain",
    "check_compatible",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_norm_per_leaf",
    "clip_by_step",
    "clip_by_value",
    "decay_first",
    "decoupled_weight_decay",
    "distance_estimate",
    "ema_of_updates",
    "ema_params",
    "exclude_bias_and_norm",
    "flat_params",
    "fused",
    "groups",
    "hyperparams",
    "infinity_norm",
    "init_sharded",
    "lamb",
    "lion",
    "lion_momentum",
    "lr_decay",
    "masked",
    "max_nu",
    "moving_average",
    "multi_steps",
    "muon",
    "nadam",
    "nadamw",
    "negate",
    "nesterov_lerp",
    "nesterov_momentum",
    "normalize",
    "normalize_by_previous",
    "orthogonalize",
    "partition",
    "prodigy",
    "quarter_power",
    "radam",
    "rectify",
    "relative_step_size",
    "restore_state",
    "rmsprop",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_moments",
    "scale_by_shape",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "set_hyperparams",
    "sgd",
    "sign",
    "slow_ema",
    "state_shardings",
    "sweep",
    "sweep_params",
    "trace",
    "trust_ratio",
    "unscale_loss",
    "update_rms",
    "with_ema",
]
