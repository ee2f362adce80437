"""The moments stages: ``scale_by_moments``, ``bias_correction``, ``normalize``, ``max_nu``.

``scale_by_moments`` keeps the running moments of the gradient and emits a
:class:`Moments` value; the stages after it refine that value, and ``normalize``
turns it back into parameter-shaped updates. Adam (Kingma & Ba, 2015, Alg. 1) is

    m_t = b1 m_{t-1} + (1 - b1) g_t              scale_by_moments
    v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
    m^_t = m_t / (1 - b1^t),  v^_t = v_t / (1 - b2^t)   bias_correction
    u_t = m^_t / (sqrt(v^_t) + eps)              normalize
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage, Stateless
from adamfx._src.core.numerics import (
    compute_dtype,
    increment,
    moment_dtype,
    real_dtype,
    real_moment_dtype,
)
from adamfx._src.stages import eps as eps_module
from adamfx._src.stages.eps import EpsPlacement
from adamfx._src.stages.step_scalars import per_dtype
from adamfx._src.storage.protocol import (
    Storage,
    check_keeps_elements,
    default_dtype_of,
    init_stored,
    map_stored,
    parameter_shaped,
    resolve_storage,
    seed_of,
    step_key,
    stream_of,
)


class Moments(NamedTuple):
    """What ``scale_by_moments`` hands to the next stages (not parameter-shaped).

    Attributes:
      grad: this step's gradient (also fixes the dtype of the final updates).
      mu: first moment tree in compute dtype, or ``None`` when not kept.
      nu: second moment tree in compute dtype, or ``None`` when not kept.
      count: t, the number of steps including this one (int32).
      one_minus_b1, one_minus_b2: ``1 - b`` for the decay rates that produced
        ``mu`` and ``nu`` (kept as complements: ``1 - 0.999`` is exact where
        ``float32(0.999)`` is off by 1.3e-5 relative in ``1 - b2``).
      nu_correction: the factor ``nu`` was divided by (1 - b2^t after
        ``bias_correction``, else 1); lets ``normalize`` place eps on the raw root.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.scale_by_moments(0.5, 0.75)
    >>> moments, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> int(moments.count), float(moments.one_minus_b1), float(moments.one_minus_b2), moments.grad["w"]
    (1, 0.5, 0.25, Array([2.], dtype=float32))
    """

    grad: Any
    mu: Any
    nu: Any
    count: jax.Array
    one_minus_b1: jax.Array
    one_minus_b2: jax.Array
    nu_correction: jax.Array


class MomentsState(NamedTuple):
    count: jax.Array  # steps taken, saturating at int32 max
    mu: Any  # stored first moment (``None`` when b1 is None)
    nu: Any  # stored second moment (``None`` when b2 is None)
    hyperparams: dict


def require_moments(value: Any, stage: str) -> Moments:
    if not isinstance(value, Moments):
        raise TypeError(
            f"{stage} expects the Moments emitted by scale_by_moments, got {type(value).__name__}; "
            "place it after scale_by_moments in the chain."
        )
    return value


@dataclasses.dataclass(frozen=True)
class ScaleByMoments(Stage):
    b1: float | None
    b2: float | None
    mu_storage: Storage | None
    nu_storage: Storage | None
    names: tuple[str, str] = ("b1", "b2")
    initial_nu: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        b1, b2, names = self.b1, self.b2, tuple(self.names)
        object.__setattr__(self, "names", names)  # a list would make the stage unhashable
        if b1 is None and b2 is None:
            raise ValueError("scale_by_moments(b1=None, b2=None) keeps no moment: give b1, b2 or both.")
        shared = b1 is not None and b2 is not None and names[0] == names[1] and b1 is not b2
        if shared and checks.is_concrete(b1) and checks.is_concrete(b2) and b1 != b2:
            raise ValueError(f"scale_by_moments(b1={b1!r}, b2={b2!r}) shares one name {names[0]!r}: give equal rates.")
        checks.check_range("initial_nu", self.initial_nu, 0.0)

    def hyperparameters(self):
        rates = zip(self.names, (self.b1, self.b2), strict=True)
        return {name: rate for name, rate in rates if rate is not None}

    @property
    def elementwise(self) -> bool:  # as elementwise as its storages (factored is not)
        return all(s.elementwise for s in (self.mu_storage, self.nu_storage) if s is not None)

    def _shared_key(self, count):
        """One random word for both moments when both round stochastically with one seed: the
        element hash is then computed once per element (each moment salts it with its own value)."""
        mu, nu = self.mu_storage, self.nu_storage
        if mu is None or nu is None or not (mu.needs_key and nu.needs_key) or seed_of(mu) != seed_of(nu):
            return None
        return step_key(mu, count, stream_of(self, "moments"))

    def _stored_zeros(self, params, storage, default_dtype, value=0.0):
        return None if storage is None else init_stored(storage, params, default_dtype, value)

    def init(self, params):
        rates = self.hyperparameters()
        return MomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=self._stored_zeros(params, self.mu_storage, moment_dtype),
            nu=self._stored_zeros(params, self.nu_storage, real_moment_dtype, self.initial_nu),
            hyperparams=hp.as_arrays(**hp.complements(**rates)),
        )

    def update(self, grads, state, params=None, **extra_args):
        for storage, stored in ((self.mu_storage, state.mu), (self.nu_storage, state.nu)):
            if storage is not None and stored is not None:
                grads = checks.conform(grads, storage, parameter_shaped(storage, stored), "gradients")
        count = increment(state.count)
        c1 = None if self.b1 is None else state.hyperparams[hp.COMPLEMENT + self.names[0]]
        c2 = None if self.b2 is None else state.hyperparams[hp.COMPLEMENT + self.names[1]]

        g = jax.tree.map(lambda g: g.astype(compute_dtype(g.dtype)), grads)
        key = self._shared_key(count)

        def ema(storage, stored, power, one_minus_b, field):
            """``b old + (1 - b) |g|^power`` leaf by leaf, kept in ``storage`` (the state's ``field``)."""

            def both(dtype):
                c = jnp.asarray(one_minus_b).astype(dtype)
                return 1 - c, c

            rates = per_dtype(both, g)  # b and 1 - b, once per step

            def leaf(record, key, g, like):
                b, c = rates(g.dtype)
                default = default_dtype_of(g if power == 1 else g.real, like)
                return storage.accumulate(record, g, power=power, decay=b, weight=c, default_dtype=default, key=key)

            return map_stored(storage, leaf, stored, g, grads, count=count, stream=stream_of(self, field), key=key)

        mu, new_mu = None, None
        if c1 is not None:  # m_t = b1 m_{t-1} + (1 - b1) g_t
            mu, new_mu = ema(self.mu_storage, state.mu, 1, c1, "mu")
        nu, new_nu = None, None
        if c2 is not None:  # v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
            nu, new_nu = ema(self.nu_storage, state.nu, 2, c2, "nu")
        one = jnp.asarray(1.0, dtype=float)
        moments = Moments(grads, mu, nu, count, one if c1 is None else c1, one if c2 is None else c2, one)
        return moments, MomentsState(count, new_mu, new_nu, state.hyperparams)


def scale_by_moments(
    b1: float | None = 0.9,
    b2: float | None = 0.999,
    *,
    mu_dtype=None,
    nu_dtype=None,
    names: tuple[str, str] = ("b1", "b2"),
    initial_nu: float = 0.0,
) -> GradientTransformation:
    """Exponential moving averages of ``g`` and ``|g|^2`` (complex-safe).

    ``m_t = b1 m_{t-1} + (1-b1) g_t`` and ``v_t = b2 v_{t-1} + (1-b2) |g_t|^2``,
    computed in at least float32 and stored as ``mu_dtype``/``nu_dtype`` (default:
    the parameter's dtype; a narrower float dtype rounds stochastically, ``"int8"``
    quantises block-wise, ``"factored"`` keeps row and column means of ``nu``; see
    :mod:`adamfx._src.storage.protocol`). ``b1=None`` or ``b2=None`` keeps only the other moment.
    Emits a :class:`Moments` value for :func:`bias_correction` and :func:`normalize`.
    State: ``count`` (saturating), ``mu``, ``nu``, hyperparameters ``b1``, ``b2``.
    ``names`` renames those two hyperparameters in the state (RMSprop and
    Adadelta call their rate ``rho``); one name for both makes them a single
    hyperparameter. ``initial_nu`` is ``v_0`` (optax ``rmsprop``'s ``initial_scale``; ``m_0`` is 0).
    Used by :func:`adamfx.adam` and its relatives.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.scale_by_moments(0.5, 0.75)
    >>> moments, state = tx.update({"w": jnp.array([2.0, -4.0])}, tx.init({"w": jnp.zeros(2)}))
    >>> moments.mu["w"], state.nu["w"]  # (1 - 0.5) g, (1 - 0.75) g^2
    (Array([ 1., -2.], dtype=float32), Array([1., 4.], dtype=float32))
    """
    mu_storage = None if b1 is None else resolve_storage(mu_dtype, "mu_dtype")
    nu_storage = None if b2 is None else resolve_storage(nu_dtype, "nu_dtype", nonnegative=True)
    return ScaleByMoments(b1, b2, mu_storage, nu_storage, names, initial_nu).transform()


def one_minus_power(one_minus_b: jax.Array, t: jax.Array) -> jax.Array:
    """``1 - b**t`` from ``1 - b``, accurate to a few ulp also for small t (via log1p/expm1)."""
    return -jnp.expm1(t * jnp.log1p(-one_minus_b))


@dataclasses.dataclass(frozen=True)
class BiasCorrection(Stateless):
    correct_mu: bool = True
    correct_nu: bool = True

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "bias_correction")
        return bias_corrected(moments, mu=self.correct_mu, nu=self.correct_nu), state


def bias_corrected(moments: Moments, *, mu: bool = True, nu: bool = True) -> Moments:
    """``moments`` with ``mu`` divided by ``1 - b1^t`` and ``nu`` by ``1 - b2^t`` (each where asked and kept).

    The maths of :func:`bias_correction`, also used by :func:`adamfx.nesterov_momentum` for ``nu``.
    """
    t = moments.count

    def scale(tree, one_minus_b):
        # Multiply by the scalar 1/bc: one division per step, not per element, and the
        # same rounding in every fusion (XLA rewrites (m / bc1) / d as m / (bc1 d) in
        # some fusions and not in others, which moved results by a few ulp).
        bc = one_minus_power(one_minus_b, t)
        inverse = 1 / bc
        inverse_in = per_dtype(inverse.astype, tree)  # once per step, not per leaf
        return jax.tree.map(lambda x: x * inverse_in(x.dtype), tree), bc

    if mu and moments.mu is not None:
        moments = moments._replace(mu=scale(moments.mu, moments.one_minus_b1)[0])
    if nu and moments.nu is not None:
        new_nu, bc2 = scale(moments.nu, moments.one_minus_b2)
        moments = moments._replace(nu=new_nu, nu_correction=bc2)
    return moments


def bias_correction(*, mu: bool = True, nu: bool = True) -> GradientTransformation:
    """Divides the moments by ``1 - b^t``: ``m^ = m / (1 - b1^t)``, ``v^ = v / (1 - b2^t)``.

    ``mu=False`` or ``nu=False`` leaves that moment uncorrected (optax's
    ``amsgrad(bias_correction_mu=, bias_correction_nu=)``; the AMSGrad paper corrects neither).

    ``b1``, ``b2`` and ``t`` come from the :class:`Moments` it corrects, so they
    cannot disagree with the moments stage (and ``set_hyperparams(b1=...)``
    changes one place). No state. Used by Adam, AMSGrad, Adamax, RAdam.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, 0.75), adamfx.bias_correction())
    >>> corrected, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> corrected.mu["w"], corrected.nu["w"].round(5)  # (0.5 * 2) / (1 - 0.5), (0.25 * 4) / (1 - 0.75)
    (Array([2.], dtype=float32), Array([4.], dtype=float32))
    """
    return BiasCorrection(bool(mu), bool(nu)).transform()


class NormalizeState(NamedTuple):
    hyperparams: dict  # eps, eps_root


@dataclasses.dataclass(frozen=True)
class Normalize(Stage):
    eps: float
    eps_root: float
    eps_placement: str

    def __post_init__(self):
        super().__post_init__()
        eps_module.check_placement(self.eps_placement)

    def init(self, params):
        return NormalizeState(hp.as_arrays(eps=self.eps, eps_root=self.eps_root))

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "normalize")
        eps_root = state.hyperparams["eps_root"]
        eps = eps_module.scalar_eps(self.eps_placement, state.hyperparams["eps"], moments.nu_correction)
        numerator = moments.mu if moments.mu is not None else moments.grad
        scalars = per_dtype(lambda dtype: (jnp.asarray(eps).astype(dtype), eps_root.astype(dtype)), moments.nu)

        def leaf(m, v, g):
            m = m.astype(compute_dtype(m.dtype))
            eps, eps_root = scalars(v.dtype)
            return (m / eps_module.nonzero_root(v, eps, eps_root, self.eps_placement)).astype(g.dtype)

        return jax.tree.map(leaf, numerator, moments.nu, moments.grad), state


def normalize(
    eps: float = 1e-8, *, eps_root: float = 0.0, eps_placement: EpsPlacement = "outside"
) -> GradientTransformation:
    """Divides the first moment (or the gradient) by the root of the second: ``m / (sqrt(v + eps_root) + eps)``.

    ``eps_placement`` says where ``eps`` goes (:mod:`adamfx._src.stages.eps`):

    - ``"outside"`` (PyTorch, optax Adam): ``m^ / (sqrt(v^) + eps)``;
    - ``"outside_raw"`` (Keras Adam): ``m^ / (sqrt(v^) + eps / sqrt(1 - b2^t))``, i.e. eps on the
      uncorrected ``sqrt(v)``;
    - ``"inside"`` (Keras and optax Adagrad/RMSprop, Adadelta): ``m^ / sqrt(v^ + eps)``;
    - ``"clamp"``: ``m^ / max(sqrt(v^), eps)``.

    ``eps_root`` sits inside the root besides (optax's ``eps_root``).
    A zero gradient history with ``eps = 0`` (``0 / 0``) gives a zero update,
    where PyTorch and optax give NaN. To differentiate *through* the update
    (meta-learning), give ``eps_root > 0`` (optax's advice): ``sqrt`` has no
    derivative at ``v = 0``.
    Emits parameter-shaped updates in the gradient's dtype. State: ``eps``, ``eps_root``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, 0.5), adamfx.normalize(0.0))
    >>> tx.update({"w": jnp.array([2.0, -4.0])}, tx.init({"w": jnp.zeros(2)}))[0]["w"]  # (1, -2) / sqrt((2, 8))
    Array([ 0.70710677, -0.70710677], dtype=float32)
    """
    return Normalize(eps, eps_root, eps_placement).transform()


class MaxNuState(NamedTuple):
    nu_max: Any  # running maximum of the second moment it sees


@dataclasses.dataclass(frozen=True)
class MaxNu(Stage):
    storage: Storage

    def init(self, params):
        return MaxNuState(init_stored(self.storage, params, real_moment_dtype))

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "max_nu")

        def leaf(record, key, v, g):  # v_max <- max(v_max, v)
            v_max = jnp.maximum(self.storage.decode(record, dtype=v.dtype), v)
            return self.storage.store(v_max, default_dtype=real_dtype(g.dtype), key=key)

        count, stream = moments.count, stream_of(self, "nu_max")
        nu, kept = map_stored(self.storage, leaf, state.nu_max, moments.nu, moments.grad, count=count, stream=stream)
        return moments._replace(nu=nu), MaxNuState(kept)


def max_nu(*, nu_dtype=None) -> GradientTransformation:
    """AMSGrad's running maximum (Reddi et al., 2018): ``v <- max(v_max, v)``.

    Placed before :func:`bias_correction` it maxes the raw ``v`` (PyTorch, Keras);
    after it, the corrected ``v^`` (optax). State: ``nu_max``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, 0.5), adamfx.max_nu())
    >>> state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))[1]  # v_1 = 2
    >>> tx.update({"w": jnp.array([0.0])}, state)[0].nu["w"]  # v_2 = 1, the maximum stays 2
    Array([2.], dtype=float32)
    """
    storage = resolve_storage(nu_dtype, "nu_dtype", nonnegative=True)
    check_keeps_elements(storage, "nu_dtype", nu_dtype, "max_nu", "a running maximum")
    return MaxNu(storage).transform()
