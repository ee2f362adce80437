"""adamfx: Adam and its relatives as chainable, jittable optax transforms.

Where things live: ``adamfx/_src/adam.py`` (Adam, AdamW, AMSGrad),
``adamfx/_src/moments.py`` (scale_by_moments, bias_correction, normalize),
``adamfx/_src/stages.py`` (lr_decay, weight decay), ``adamfx/_src/hyperparams.py``
(hyperparameters in the state), ``adamfx/_src/sweep.py`` (vectorized
hyperparameter sweeps), ``adamfx/_src/wrappers.py`` (accumulation,
non-finite steps, parameter groups), ``adamfx/_src/ema.py`` (moving average of
the params), ``adamfx/_src/sharding.py`` and ``adamfx/_src/checkpoint.py``;
Adam's relatives in ``sgd.py``, ``adagrad.py``, ``rmsprop.py`` (RMSprop,
Adadelta), ``nadam.py``, ``adamax.py``, ``radam.py``, their extra stages in
``momentum.py``, ``moment_forms.py`` and ``corrections.py``; how moments are
stored in ``storage.py`` (float dtypes with stochastic rounding), ``quantize.py``
(8-bit blocks) and ``factored.py`` (Adafactor row/column statistics); the
flat-buffer execution in ``fused.py`` (fused) and ``flat.py`` (flat_params).
"""

from adamfx._src.adagrad import adagrad
from adamfx._src.adam import CONVENTIONS, adam, adamw, amsgrad
from adamfx._src.adamax import adamax, adamaxw
from adamfx._src.base import Chain, GradientTransformation, GradientTransformationExtraArgs, Stage, chain
from adamfx._src.checkpoint import check_compatible, restore_state
from adamfx._src.clipping import clip_by_global_norm, clip_by_norm_per_leaf, clip_by_value, negate, unscale_loss
from adamfx._src.corrections import nesterov_momentum, rectify
from adamfx._src.ema import EmaState, ema_params, with_ema
from adamfx._src.factored import FactoredStorage
from adamfx._src.flat import flat_params
from adamfx._src.fused import fused
from adamfx._src.hyperparams import groups, hyperparams, set_hyperparams
from adamfx._src.moment_forms import accumulate_squares, center, infinity_norm, update_rms
from adamfx._src.moments import Moments, bias_correction, max_nu, normalize, scale_by_moments
from adamfx._src.momentum import decoupled_weight_decay, trace
from adamfx._src.nadam import nadam, nadamw
from adamfx._src.quantize import Int8Storage
from adamfx._src.radam import radam
from adamfx._src.rmsprop import adadelta, rmsprop
from adamfx._src.sgd import sgd
from adamfx._src.sharding import bytes_per_device, init_sharded, state_shardings
from adamfx._src.stages import add_decayed_weights, lr_decay
from adamfx._src.storage import FloatStorage, Storage
from adamfx._src.sweep import sweep, sweep_params
from adamfx._src.wrappers import apply_if_finite, exclude_bias_and_norm, masked, multi_steps, partition

__version__ = "0.1.0"

__all__ = [
    "CONVENTIONS",
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
