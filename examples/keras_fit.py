"""The article's Keras example, with adamfx's Adam inside ``model.fit`` (fp32 and int8 state).

Keras 3 on JAX; the only change to a Keras script is the optimizer::

    import adamfx.keras
    model.compile(optimizer=adamfx.keras.Optimizer(adamfx.adam(1e-3, convention="keras")), ...)

The model is the article's ``Dense(64, relu) -> Dense(1, sigmoid)`` on 100 features, trained
with binary cross-entropy for 10 epochs, batch 32, on a synthetic problem whose labels follow a
linear rule (so accuracy means something). It is trained three times from the same initial
weights: with ``keras.optimizers.Adam``, with adamfx's Keras-convention Adam, and with the same
Adam keeping its moments in 8-bit blocks. It prints validation accuracy and the bytes of each
optimizer state (the 6400-weight kernel is quantized; leaves under 4096 weights stay float32).

    KERAS_BACKEND=jax python examples/keras_fit.py
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is first imported

import keras
import numpy as np

import adamfx
import adamfx.keras

FEATURES, N_TRAIN, N_VAL = 100, 1000, 200


def make_data():
    rng = np.random.default_rng(0)
    w = rng.normal(size=FEATURES)
    x = rng.normal(size=(N_TRAIN + N_VAL, FEATURES)).astype("float32")
    y = (x @ w > 0).astype("float32")[:, None]
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def make_model():
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def state_bytes(optimizer) -> int:
    """Bytes of the optimizer's variables (its state; Keras's step counter included)."""
    return sum(v.numpy().nbytes for v in optimizer.variables)


def main(epochs: int = 10) -> dict[str, tuple[float, int]]:
    (x_train, y_train), (x_val, y_val) = make_data()
    keras.utils.set_random_seed(0)
    initial = make_model().get_weights()
    optimizers = {
        "keras.optimizers.Adam(1e-3)": keras.optimizers.Adam(1e-3),
        "adamfx.adam fp32 state": adamfx.keras.Optimizer(adamfx.adam(1e-3, convention="keras")),
        "adamfx.adam int8 state": adamfx.keras.Optimizer(
            adamfx.adam(1e-3, convention="keras", mu_dtype="int8", nu_dtype="int8")
        ),
    }
    results = {}
    for name, optimizer in optimizers.items():
        model = make_model()
        model.set_weights(initial)
        model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
        history = model.fit(
            x_train, y_train, epochs=epochs, batch_size=32, validation_data=(x_val, y_val), shuffle=False, verbose=0
        )
        accuracy = history.history["val_accuracy"][-1]
        results[name] = (accuracy, state_bytes(optimizer))
        print(f"{name:28s} val accuracy {accuracy:.3f}   optimizer state {state_bytes(optimizer):6d} bytes")
    fp32, int8 = results["adamfx.adam fp32 state"][1], results["adamfx.adam int8 state"][1]
    print(f"int8 state / fp32 state: {int8 / fp32:.2f}")
    return results


if __name__ == "__main__":
    main()
