"""Muon: orthogonalized momentum for weight matrices, AdamW for the other leaves, in three conventions."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamfx._src.core import checks, frozen
from adamfx._src.core.base import GradientTransformation, Stage, chain, stage_of
from adamfx._src.optimizers import conventions
from adamfx._src.optimizers.adam import adam, adamw
from adamfx._src.stages.clipping import gradient_stages
from adamfx._src.stages.corrections import nesterov_momentum
from adamfx._src.stages.moments import bias_correction, scale_by_moments
from adamfx._src.stages.momentum import trace
from adamfx._src.stages.orthogonalize import nesterov_lerp, orthogonalize, scale_by_shape
from adamfx._src.stages.weight_decay import decoupled_weight_decay


class MuonConvention(NamedTuple):
    """How one peer writes Muon; each field picks a default or a composition."""

    learning_rate: float
    weight_decay: str  # "decoupled" in every peer: p -= lr wd p
    eps: float  # Newton-Schulz normalisation eps
    eps_placement: str  # "clamp" max(||X||_F, eps) or "outside" ||X||_F + eps
    momentum_form: str  # "ema" (uncorrected), "ema_corrected" (bias-corrected) or "sum"
    shape_rule: str  # width rule without consistent_rms: "rows/cols", "cols/rows" or "none"
    consistent_rms: float | None  # default consistent_rms (None: the width rule)
    muon_weight_decay: float  # default weight_decay of the matrices
    adam_eps: float | None  # default Adam eps (None: Muon's eps)
    adam_weight_decay: float  # default AdamW weight decay
    adam_nesterov: bool  # the Adam leaves take muon's nesterov (optax: NAdamW) or plain AdamW
    adam_decay_rate: str  # the Adam leaves decay with "adam" (adam_learning_rate) or "muon" (learning_rate)


MUON_CONVENTIONS = {
    "torch": MuonConvention(1e-3, "decoupled", 1e-7, "clamp", "ema", "rows/cols", None, 0.1, 1e-8, 1e-2, False, "adam"),
    "keras": MuonConvention(1e-3, "decoupled", 1e-7, "outside", "sum", "none", 0.2, 4e-3, 1e-7, 4e-3, False, "muon"),
    "optax": MuonConvention(
        1e-3, "decoupled", 1e-8, "outside", "ema_corrected", "cols/rows", None, 0.0, None, 0.0, True, "adam"
    ),
}


def _momentum_stages(form: str, momentum: Any, nesterov: bool, mu_dtype: Any) -> list[GradientTransformation]:
    """The momentum buffer of each convention, as stages (the buffer is stored as ``mu_dtype``)."""
    if form == "sum":  # b = mu b + g; nesterov: g + mu b (Keras)
        return [trace(momentum, 0.0, nesterov and not checks.is_static_zero(momentum), mu_dtype=mu_dtype)]
    ema = scale_by_moments(momentum, None, mu_dtype=mu_dtype, names=("momentum", "momentum"))  # m = mu m + (1-mu) g
    if form == "ema":  # nesterov: mu m + (1 - mu) g (PyTorch)
        return [ema, nesterov_lerp()] if nesterov else [ema]
    # mu m / (1 - mu^(t+1)) + (1 - mu) g / (1 - mu^t), or m / (1 - mu^t) (optax)
    return [ema, nesterov_momentum(None) if nesterov else bias_correction()]


@dataclasses.dataclass(frozen=True)
class MuonSplit(Stage):
    """``optax.partition`` of the leaves between Muon (``muon_mask`` true) and Adam, comparing by value.

    Its state is optax's ``PartitionState`` with groups ``"muon"`` and ``"adam"``
    (the ``group=`` of :func:`adamfx.set_hyperparams`).

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.muon(0.1)
    >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    >>> sorted(tx.init(params).inner_states)  # matrices go to "muon", the rest to "adam"
    ['adam', 'muon']
    """

    muon: Stage
    adam: Stage
    muon_mask: Any  # frozen pytree of bools, a callable, or None (every 2-D leaf)
    elementwise: ClassVar[bool] = False

    def labels(self, params: Any) -> Any:
        """``"muon"`` or ``"adam"`` per leaf; a matrix group leaf with fewer than 2 axes is an error naming it."""
        mask = frozen.thaw(self.muon_mask)
        if mask is None:
            return jax.tree.map(lambda p: "muon" if jnp.ndim(p) == 2 else "adam", params)
        tree = frozen.resolve_mask(mask, params, "muon_mask")

        def label(path, chosen, p):
            if not isinstance(chosen, (bool, np.bool_)):
                raise ValueError(f"muon_mask has a leaf {chosen!r} at {jax.tree_util.keystr(path)}: it must be a bool.")
            if chosen and jnp.ndim(p) < 2:
                raise ValueError(
                    f"muon_mask selects {jax.tree_util.keystr(path)} of shape {jnp.shape(p)}: Muon needs a matrix "
                    "(or a stack of matrices, leading axes a batch); leave it to Adam."
                )
            return "muon" if chosen else "adam"

        return jax.tree_util.tree_map_with_path(label, tree, params)

    def _partition(self) -> optax.GradientTransformation:
        return optax.partition({"muon": self.muon.transform(), "adam": self.adam.transform()}, self.labels)

    def init(self, params):
        return self._partition().init(params)

    def update(self, updates, state, params=None, **extra_args):
        return self._partition().update(updates, state, params, **extra_args)


def _stage(tx: GradientTransformation) -> Stage:
    stage = stage_of(tx)
    assert stage is not None, "an adamfx chain is a stage"
    return stage


def _adam_leaves(
    conv: MuonConvention,
    convention: str,
    *,
    learning_rate,
    adam_learning_rate,
    b1,
    b2,
    eps,
    weight_decay,
    nesterov,
    decay,
    weight_decay_mask,
    mu_dtype,
    nu_dtype,
) -> GradientTransformation:
    """The convention's AdamW for the non-matrix leaves, from :func:`adamfx.adamw`'s stages."""
    moments = {"b1": b1, "b2": b2, "eps": eps, "decay": decay, "mu_dtype": mu_dtype, "nu_dtype": nu_dtype}
    if conv.adam_decay_rate == "adam" or checks.is_static_zero(weight_decay):
        return adamw(
            adam_learning_rate,
            weight_decay=weight_decay,
            weight_decay_mask=weight_decay_mask,
            nesterov=nesterov,
            convention=convention,
            **moments,
        )
    # Keras decays every variable with the main learning rate: p -= lr wd p, whatever adam_lr_ratio.
    return chain(
        adam(adam_learning_rate, weight_decay=None, nesterov=nesterov, convention=convention, **moments),
        decoupled_weight_decay(weight_decay, learning_rate, decay, weight_decay_mask),
    )


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def muon(
    learning_rate: Any = 1e-3,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    ns_steps: int = 5,
    momentum: float = 0.95,
    eps: float | None = None,
    weight_decay: float | None = None,
    *,
    nesterov: bool = True,
    consistent_rms: float | bool | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float | None = None,
    adam_weight_decay: float | None = None,
    adam_learning_rate: Any = None,
    ns_dtype: Any = "float32",
    muon_mask: Any = None,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"), with AdamW.

    For each matrix leaf W (rows x cols; leading axes: a stack of matrices), step t,
    ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        B_t = momentum buffer of g_t (convention's form, below)
        O_t = NS_{a,b,c}^{ns_steps}(B_t)          Newton-Schulz orthogonalization (adamfx.orthogonalize)
        W_t = W_{t-1} - lr_t (s(W) O_t + weight_decay W_{t-1})

    with the shape factor ``s(W)``: the width rule of the convention, or
    ``consistent_rms sqrt(max(rows, cols))`` (Liu et al., 2025, "Muon is Scalable for
    LLM Training": AdamW's update RMS). Every other leaf -- vectors, scalars, and matrices
    ``muon_mask`` leaves out (embeddings, the output head) -- takes the convention's
    AdamW with ``adam_b1``, ``adam_b2``, ``adam_eps``, ``adam_weight_decay`` and
    ``adam_learning_rate`` (default: ``learning_rate``), built from :func:`adamfx.adamw`.
    The chain: ``gradient options -> MuonSplit(muon: momentum -> orthogonalize ->
    scale_by_shape -> add_decayed_weights -> lr_decay; adam: adamw)``.

    ==============  ==============================  ==============================  ==============================
    convention      "torch" (torch.optim.Muon +     "keras" (keras Muon)             "optax" (optax.contrib.muon)
                    torch.optim.AdamW, the rest)
    ==============  ==============================  ==============================  ==============================
    momentum        EMA ``m = mu m + (1-mu) g``     sum ``b = mu b + g``            EMA, bias-corrected
    nesterov        ``mu m + (1-mu) g``             ``g + mu b``                    ``mu m/(1-mu^(t+1))
                                                                                    + (1-mu) g/(1-mu^t)``
    NS normalise    ``X / max(||X||_F, eps)``       ``X / (||X||_F + eps)``         ``X / (||X||_F + eps)``
    eps             1e-7                            1e-7 (fixed in Keras)           1e-8
    shape factor    ``sqrt(max(1, rows/cols))``     1                               ``sqrt(max(1, cols/rows))``
    consistent_rms  off (0.2: "match_rms_adamw")    0.2 (``rms_rate``)              off
    weight_decay    0.1                             0.004                           0
    Adam leaves     AdamW, eps 1e-8, wd 1e-2        Keras Adam, eps 1e-7 on raw     optax AdamW (NAdamW with
                                                    sqrt(v), wd 0.004 with the      nesterov), eps = Muon's
                                                    *Muon* learning rate            eps, wd 0
    ==============  ==============================  ==============================  ==============================

    Every convention's weight decay is decoupled and scaled by the unadjusted ``lr_t``
    (``p -= lr_t wd p``); PyTorch's and optax's Adam leaves decay with ``adam_learning_rate``,
    Keras's with ``learning_rate``. Keras's ``adam_lr_ratio`` r is ``adam_learning_rate = r
    learning_rate``. PyTorch runs Newton-Schulz in bfloat16 (``ns_dtype=jnp.bfloat16`` gives its
    trajectory up to bfloat16 rounding); adamfx's default is float32.

    Args:
      learning_rate: a number or a schedule ``count -> lr``.
      ns_coefficients: (a, b, c) of the quintic ``a X + b (X X^T) X + c (X X^T)^2 X``.
      ns_steps: Newton-Schulz iterations (unrolled).
      momentum: the buffer's rate, in [0, 1].
      eps: Newton-Schulz normalisation eps; ``None``: the convention's.
      weight_decay: decoupled weight decay of the matrices; ``None``: the convention's.
      nesterov: the convention's Nesterov look-ahead (optax: also NAdamW for the Adam leaves).
      consistent_rms: ``None``: the convention's; ``False``: the width rule; a number: Liu et al.'s factor.
      adam_b1, adam_b2, adam_eps, adam_weight_decay, adam_learning_rate: the Adam leaves' (``None``: the
        convention's; ``adam_learning_rate=None`` follows ``learning_rate``).
      ns_dtype: the dtype Newton-Schulz runs in (``"float32"``; a name, as ``optax.inject_hyperparams``
        would take a dtype class such as ``jnp.bfloat16`` for a schedule).
      muon_mask: pytree of bools (or callable of params) choosing the Muon leaves; ``None``: every
        2-D leaf. A leaf with more axes is a stack of matrices (its last two axes); fewer than 2 is an error.
      weight_decay_mask: leaves to decay, in both groups (a callable, as for :func:`adamfx.partition`).
      decay, maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor, convention: as
        :func:`adamfx.adam` (the gradient options act on the whole tree, first).
      mu_dtype: storage of the momentum buffer and of Adam's first moment; nu_dtype: Adam's second.

    The state is optax's ``PartitionState`` with groups ``"muon"`` and ``"adam"``:
    ``set_hyperparams(state, learning_rate=...)`` changes both, ``group="adam"`` one.
    Not elementwise: :func:`adamfx.fused` refuses it.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.muon(0.1, weight_decay=0.0, convention="torch")
    >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    >>> updates, _ = tx.update({"w": jnp.eye(2), "b": jnp.ones(2)}, tx.init(params), params)
    >>> [round(float(x), 4) + 0.0 for x in updates["w"].ravel()]  # -lr NS(I): quintic NS lands near 1.108 I
    [-0.1108, 0.0, 0.0, -0.1108]
    >>> [round(float(x), 4) for x in updates["b"]]  # AdamW's first step: -lr sign(g)
    [-0.1, -0.1]
    """
    conv = conventions.lookup(MUON_CONVENTIONS, convention)
    checks.check_hyperparameter("learning_rate", learning_rate)
    conventions.require("muon", momentum=momentum, adam_b1=adam_b1, adam_b2=adam_b2)
    for name, value in (
        ("adam_b1", adam_b1),
        ("adam_b2", adam_b2),
        ("adam_eps", adam_eps),
        ("adam_weight_decay", adam_weight_decay),
        ("adam_learning_rate", adam_learning_rate),
    ):
        checks.check_hyperparameter(name, value)
    if consistent_rms is not False:
        checks.check_hyperparameter("consistent_rms", consistent_rms)
    frozen.check_mask("muon_mask", frozen.freeze(muon_mask))
    eps_value: float = conventions.pick(eps, conv.eps)
    learning_rate = conventions.pick(learning_rate, conv.learning_rate)
    rms = None if consistent_rms is False else conventions.pick(consistent_rms, conv.consistent_rms)
    core = [
        *_momentum_stages(conv.momentum_form, momentum, bool(nesterov), mu_dtype),
        orthogonalize(ns_coefficients, ns_steps, eps_value, eps_placement=conv.eps_placement, ns_dtype=ns_dtype),
        scale_by_shape(conv.shape_rule, rms),
    ]
    decay, weight_decay_mask = options.pop("decay"), options.pop("weight_decay_mask")
    matrices = conventions.finish(
        core,
        conv,
        learning_rate=learning_rate,
        decay=decay,
        weight_decay=conventions.pick(weight_decay, conv.muon_weight_decay),
        weight_decay_mask=weight_decay_mask,
    )
    others = _adam_leaves(
        conv,
        convention,
        learning_rate=learning_rate,
        adam_learning_rate=conventions.pick(adam_learning_rate, learning_rate),
        b1=adam_b1,
        b2=adam_b2,
        eps=conventions.pick(adam_eps, conventions.pick(conv.adam_eps, eps_value)),
        weight_decay=conventions.pick(adam_weight_decay, conv.adam_weight_decay),
        nesterov=bool(nesterov) and conv.adam_nesterov,
        decay=decay,
        weight_decay_mask=weight_decay_mask,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    gradient = gradient_stages(**options)  # on the whole tree, first (Keras: global_clipnorm over every variable)
    split = MuonSplit(_stage(matrices), _stage(others), frozen.freeze(muon_mask)).transform()
    return chain(*gradient, split) if gradient else split
