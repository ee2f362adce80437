"""adamfx and optax optimizers inside Keras 3 ``model.compile`` / ``model.fit`` (JAX backend).

``import adamfx`` does not import Keras; ``import adamfx.keras`` does, and needs Keras 3
running on JAX (``KERAS_BACKEND=jax`` set before Keras is first imported). The two-line
change from a Keras script::

    import adamfx.keras
    model.compile(optimizer=adamfx.keras.Optimizer(adamfx.adam(1e-3, convention="keras")), ...)

See :class:`Optimizer`.
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

from adamfx._src.keras_bridge import Optimizer  # noqa: E402

__all__ = ["Optimizer"]
