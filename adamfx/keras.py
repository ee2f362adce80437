"""adamfx and optax optimizers inside Keras 3 ``model.compile`` / ``model.fit`` (JAX backend).

``import adamfx`` does not import Keras; ``import adamfx.keras`` does, and needs Keras 3
running on JAX (``KERAS_BACKEND=jax`` set before Keras is first imported). The two-line
change from a Keras script::

    import adamfx.keras
    model.compile(optimizer=adamfx.keras.Optimizer(adamfx.adam(1e-3, convention="keras")), ...)

See :class:`Optimizer`.

How it fits Keras: ``build`` runs ``tx.init`` on the model's trainable variables and
keeps every leaf of the optax state in a Keras optimizer variable of the leaf's own
shape and dtype (int8 codes in int8 variables, counts in int32 ones), so Keras's
jitted, stateless train step passes the state in and out like any optimizer's and
``model.save`` writes it. Each step (``_backend_update_step``, called by Keras after
its own loss unscaling and clipping) is one ``tx.update`` on the whole tree of
gradients and one ``optax.apply_updates``. (The class lives here, not under ``_src``:
Keras registers it by name, and one module must define it.)
"""

from __future__ import annotations

_FIX = "pip install 'adamfx[keras]' (Keras >= 3) and set KERAS_BACKEND=jax before Keras is first imported"

try:
    import keras
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(f"adamfx.keras needs Keras 3 on its JAX backend, and Keras is not installed: {_FIX}") from error

if not hasattr(keras, "backend") or int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"adamfx.keras needs Keras 3; this is Keras {keras.__version__}: {_FIX}")
if keras.backend.backend() != "jax":
    raise ImportError(
        f"adamfx.keras runs on Keras's JAX backend; Keras was loaded with the {keras.backend.backend()!r} backend: "
        'set KERAS_BACKEND=jax (or "backend": "jax" in ~/.keras/keras.json) before Keras is first imported'
    )

from typing import Any, cast  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from keras.src.utils import tracking  # noqa: E402

from adamfx._src.core.hyperparams import hyperparams, set_hyperparams, stage_states  # noqa: E402
from adamfx._src.training import keras_config  # noqa: E402

__all__ = ["Optimizer"]

_KERAS_OWN_LR = (
    "learning_rate is the transform's: give it to the transform (adamfx.adam(learning_rate=...)) "
    "and read or assign optimizer.learning_rate afterwards"
)
_KERAS_OWN_WD = (
    "Keras's weight_decay= would decay the weights a second time, outside the transform: "
    "use the transform's own (adamfx.adamw(..., weight_decay=...), adamfx.adam(..., weight_decay=...) "
    "or optax.add_decayed_weights in a chain)"
)


def _no_learning_rate():  # stands in for Keras's learning-rate variable, which this optimizer does not keep
    return None


def _as_transform(tx: Any) -> tuple[optax.GradientTransformation, Any]:
    """``(transform, factory or None)`` from what the user passed; TypeError for anything else."""
    if isinstance(tx, optax.GradientTransformation):
        return tx, None
    expected = (
        "adamfx.keras.Optimizer(tx) expects an optax GradientTransformation -- an adamfx optimizer such as "
        "adamfx.adam(1e-3, convention='keras'), or any optax transform such as optax.adam(1e-3) -- "
        "or a zero-argument function that returns one"
    )
    if isinstance(tx, keras.optimizers.Optimizer):
        raise TypeError(f"{expected}; got the Keras optimizer {type(tx).__name__}: pass it to compile() directly")
    module = getattr(tx, "__module__", None) or ""
    if callable(tx) and not (module == "adamfx" or module.startswith("adamfx.")):
        built = tx()
        if not isinstance(built, optax.GradientTransformation):
            raise TypeError(f"{expected}; the function {tx!r} returned {type(built).__name__}")
        return built, tx
    if callable(tx):
        raise TypeError(f"{expected}; got the factory {tx.__name__} itself: call it, e.g. {tx.__name__}(1e-3)")
    raise TypeError(f"{expected}; got {type(tx).__name__}")


@keras.saving.register_keras_serializable(package="adamfx")
class Optimizer(keras.optimizers.Optimizer):
    """Runs an optax ``GradientTransformation`` as a Keras optimizer (JAX backend).

    Each step is ``updates, state = tx.update(grads, state, params)`` then
    ``params = optax.apply_updates(params, updates)`` on the whole model, where
    ``params`` and ``grads`` are dicts keyed by the variables' paths
    (``"sequential/dense/kernel"``) -- the tree that masks and labels functions see.

    Args:
      tx: the transform (``adamfx.adam(1e-3, convention="keras")``, ``optax.adamw(1e-3)``,
        ``optax.chain(...)``), or a zero-argument function returning one. ``model.save``
        writes adamfx transforms by value; any other transform saves only when given as a
        function registered with ``keras.saving.register_keras_serializable``.

    ``name``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``use_ema``, ``ema_momentum``,
    ``ema_overwrite_frequency``, ``loss_scale_factor`` and ``gradient_accumulation_steps`` are as in
    ``keras.optimizers.Optimizer``: Keras applies them around the transform exactly as around its
    own optimizers (clipping and loss unscaling before it; the weight EMA and the accumulation of
    gradients around it).

    ``learning_rate=`` and ``weight_decay=`` are refused: the learning rate is the
    transform's, and Keras's weight decay would act a second time outside it.

    ``optimizer.learning_rate`` reads the learning rate held in the transform's state
    (the value the next step uses, before adamfx's legacy ``decay``; for a schedule, the
    value the last step used). Assigning it changes that value in the state -- the jitted
    train step is not rebuilt. A transform that keeps no learning rate in its state
    (``optax.adam(1e-3)``; wrap it as ``optax.inject_hyperparams(optax.adam)(1e-3)`` to
    get one) has no ``learning_rate`` attribute: Keras's learning-rate callbacks then
    report that. The value read is an array, not a Keras variable: assign the attribute
    (``optimizer.learning_rate = 1e-4``), not ``.assign(...)``. ``iterations`` counts steps.

    >>> import adamfx, adamfx.keras
    >>> optimizer = adamfx.keras.Optimizer(adamfx.adam(1e-3, convention="keras", mu_dtype="int8"))
    >>> float(optimizer.learning_rate)
    0.0010000000474974513
    >>> optimizer.learning_rate = 1e-4  # held in the transform's state from here on
    """

    def __init__(
        self,
        tx: Any,
        name: str | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        **kwargs: Any,
    ):
        if "learning_rate" in kwargs:
            raise ValueError(_KERAS_OWN_LR)
        if kwargs.get("weight_decay") is not None:
            raise ValueError(_KERAS_OWN_WD)
        kwargs.pop("weight_decay", None)
        transform, factory = _as_transform(tx)
        super().__init__(
            learning_rate=_no_learning_rate,
            name=name,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self._tx = transform
        self._factory = factory
        self._pending: dict[str, Any] = {}  # hyperparameters assigned before build
        self._applying = False

    # -- the transform and its state ---------------------------------------------------------

    @property
    def transform(self) -> optax.GradientTransformation:
        """The optax transform this optimizer runs."""
        return self._tx

    @tracking.no_automatic_dependency_tracking
    def build(self, variables):
        """Creates one optimizer variable per leaf of ``tx.init(params)``."""
        if self.built:
            return
        super().build(variables)
        updated = [v for v in variables if not self._overwrite_variable_with_gradient(v)]
        self._keys = _unique_keys(updated)
        params = {self._keys[id(v)]: v.value for v in updated}
        state = self._tx.init(params)
        if self._pending:
            state = set_hyperparams(state, **self._pending)
        leaves, self._treedef = jax.tree_util.tree_flatten_with_path(state)
        self._state_variables = [self._state_variable(path, leaf) for path, leaf in leaves]

    def _state_variable(self, path, leaf):
        where = jax.tree_util.keystr(path, simple=True, separator="/")
        value = np.asarray(leaf)
        try:
            dtype = keras.backend.standardize_dtype(value.dtype)
        except ValueError as error:
            raise TypeError(
                f"optimizer state leaf {where} has dtype {value.dtype}, which a Keras variable cannot hold"
            ) from error
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in where) or "state"
        # Keras types initializer as a name, but takes an array too (the value the variable starts from).
        initializer = cast(Any, value)
        return self.add_variable(shape=value.shape, initializer=initializer, dtype=dtype, name=name)

    @property
    def state(self) -> Any:
        """The optax state, from the optimizer variables (their current values)."""
        self._check_built("state")
        return jax.tree_util.tree_unflatten(self._treedef, [v.value for v in self._state_variables])

    def _write_state(self, state) -> None:
        leaves, treedef = jax.tree_util.tree_flatten(state)
        if treedef != self._treedef:
            raise ValueError(f"the transform changed its state structure:\n  was {self._treedef}\n  now {treedef}")
        for variable, leaf in zip(self._state_variables, leaves, strict=True):
            if leaf is not variable.value:
                if leaf.dtype != variable.dtype or leaf.shape != variable.shape:
                    raise ValueError(
                        f"the transform changed state leaf {variable.name} from {variable.dtype}{variable.shape} "
                        f"to {leaf.dtype}{leaf.shape}; a Keras optimizer variable keeps one shape and dtype"
                    )
                self.assign(variable, leaf)

    def _check_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"{what} exists once the optimizer is built: call model.fit / train_on_batch, "
                "or optimizer.build(model.trainable_variables)"
            )

    # -- one step --------------------------------------------------------------------------

    def _backend_apply_gradients(self, grads, trainable_variables):
        self._applying = True  # Keras reads self.learning_rate here for its own update_step; ours ignores it
        try:
            super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            self._applying = False

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """``tx.update`` on all gradients at once, then ``optax.apply_updates``."""
        keys = [self._keys.get(id(v)) for v in trainable_variables]
        if sorted(map(str, keys)) != sorted(self._keys.values()):
            missing = sorted(set(self._keys.values()) - set(keys))
            raise ValueError(
                f"adamfx.keras.Optimizer updates all the variables it was built with at once; "
                f"no gradient came for {missing}"
            )
        params = {k: v.value for k, v in zip(keys, trainable_variables, strict=True)}
        grads = {k: keras.ops.cast(g, params[k].dtype) for k, g in zip(keys, grads, strict=True)}
        updates, state = self._tx.update(cast(Any, grads), self.state, params)
        new_params = cast(dict, optax.apply_updates(params, updates))
        for key, variable in zip(keys, trainable_variables, strict=True):
            self.assign(variable, new_params[key])
        self._write_state(state)

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError("adamfx.keras.Optimizer updates all variables at once in _backend_update_step")

    # -- hyperparameters -------------------------------------------------------------------

    @property
    def hyperparams(self) -> dict[str, Any]:
        """``adamfx.hyperparams`` of the state (before build: of the transform's initial state)."""
        return hyperparams(self._state_or_template())

    def set_hyperparams(self, **values: Any) -> None:
        """Sets hyperparameters held in the state (``adamfx.set_hyperparams``): no new train function."""
        state = set_hyperparams(self._state_or_template(), **values)  # validates names and ranges
        if self.built:
            self._write_state(state)
        else:
            self._pending.update(values)

    def _state_or_template(self) -> Any:
        if self.built:
            return self.state
        try:
            template = self._tx.init({})
        except Exception as error:  # a transform whose init needs the real params (e.g. a label tree)
            raise ValueError(
                "this transform's hyperparameters are known once the optimizer is built: "
                "call optimizer.build(model.trainable_variables) first"
            ) from error
        return set_hyperparams(template, **self._pending) if self._pending else template

    @property
    def learning_rate(self):
        if self._applying:
            return None
        state = self._state_or_template()
        held = [node.hyperparams["learning_rate"] for _, node in stage_states(state) if _holds_lr(node)]
        reported = hyperparams(state)  # raises when parameter groups keep different values
        if not held and "learning_rate" not in reported:
            raise AttributeError(
                f"this transform keeps no learning rate in its state ({_describe(self._tx)}), so "
                "optimizer.learning_rate can neither be read nor set; give the transform a learning rate in its "
                "state: an adamfx optimizer, or optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)"
            )
        return held[0] if held else reported["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) or callable(value):
            raise TypeError(
                "a schedule cannot replace a number inside the jitted step: build the transform with it, "
                "e.g. adamfx.adam(optax.cosine_decay_schedule(1e-3, 1000))"
            )
        try:
            self.set_hyperparams(learning_rate=float(value))
        except KeyError as error:
            raise TypeError(f"optimizer.learning_rate cannot be set: {error.args[0]}") from error

    def _get_current_learning_rate(self):
        return self.learning_rate

    # -- saving ----------------------------------------------------------------------------

    def get_config(self) -> dict:
        config = {
            "name": self.name,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "use_ema": self.use_ema,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "loss_scale_factor": self.loss_scale_factor,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
        return {**config, "tx": self._tx_config()}

    def _tx_config(self) -> dict:
        if self._factory is not None:
            return {"factory": keras.saving.serialize_keras_object(self._factory)}
        try:
            return {"adamfx": keras_config.to_config(self._tx)}
        except keras_config.NotSerializable as error:
            raise ValueError(
                f"cannot save this optimizer's transform: {error}. Save it as a function instead: "
                "decorate a zero-argument function that builds the transform with "
                "@keras.saving.register_keras_serializable() and pass the function, "
                "adamfx.keras.Optimizer(make_tx)"
            ) from error

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        tx = config.pop("tx")
        if "factory" in tx:
            factory = keras.saving.deserialize_keras_object(tx["factory"], custom_objects=custom_objects)
            return cls(factory, **config)
        return cls(keras_config.from_config(tx["adamfx"]), **config)


def _holds_lr(node) -> bool:
    return "learning_rate" in node.hyperparams


def _unique_keys(variables) -> dict[int, str]:
    """``id(variable) -> key``: the variable's path, numbered when two variables share one."""
    keys: dict[int, str] = {}
    seen: dict[str, int] = {}
    for variable in variables:
        path = getattr(variable, "path", None) or variable.name
        seen[path] = seen.get(path, 0) + 1
        keys[id(variable)] = path if seen[path] == 1 else f"{path}#{seen[path]}"
    return keys


def _describe(tx) -> str:
    init = tx.init
    return getattr(init, "__qualname__", type(init).__qualname__)
