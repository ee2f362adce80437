"""adamfx transforms as JSON-able configs, for saving them inside a ``.keras`` file.

An adamfx optimizer is a tree of frozen dataclasses (stages, storages) that compare
by value, so it can be written down as that tree: each dataclass becomes
``{"class": "module:Name", "fields": {...}}`` and each stage-backed transform
``{"stage": ...}``. Reading it back imports classes from adamfx's own modules only
(a config cannot name arbitrary code) and rebuilds an equal transform.

What has no such form -- a foreign optax transform (optax's are closures), a
schedule or mask given as a function, a mask pytree -- raises
:class:`NotSerializable` naming where it sits. This module imports no Keras.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from adamfx._src.core.base import Stage, stage_of

_PACKAGE = "adamfx."


class NotSerializable(TypeError):
    """A transform (or a part of it) that has no config form."""


def to_config(tx: optax.GradientTransformation) -> dict:
    """``tx`` as a JSON-able dict; raises :class:`NotSerializable` for what has no config form.

    The config is checked to rebuild a transform equal to ``tx``.
    """
    config = _encode(tx, "tx")
    if from_config(config) != tx:
        raise NotSerializable("this transform does not rebuild equal to itself from its config")
    return config


def from_config(config: dict) -> optax.GradientTransformation:
    """The transform :func:`to_config` wrote."""
    return _decode(config)


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, optax.GradientTransformation):
        stage = stage_of(value)
        if stage is None:
            raise NotSerializable(
                f"{where} is a transform that is not an adamfx stage ({_describe(value.init)}); "
                "only adamfx optimizers and chains of adamfx stages have a config form"
            )
        return {"stage": _encode(stage, where)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith(_PACKAGE):
            raise NotSerializable(f"{where} is a {cls.__qualname__} from {cls.__module__}, not an adamfx class")
        fields = {f.name: _encode(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, (np.dtype, type)) and _is_dtype(value):
        return {"dtype": jnp.dtype(value).name}
    if isinstance(value, frozenset) and type(value) is frozenset:  # e.g. Stage.live: names of injected values
        return {"frozenset": [_encode(item, f"{where}{{}}") for item in sorted(value, key=repr)]}
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):  # not a NamedTuple
        items = [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else {"list": items}
    raise NotSerializable(f"{where} is {_describe(value)}, which has no config form")


def _decode(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    if "float" in config:
        return float(config["float"])
    if "dtype" in config:
        return jnp.dtype(config["dtype"])
    if "tuple" in config:
        return tuple(_decode(item) for item in config["tuple"])
    if "list" in config:
        return [_decode(item) for item in config["list"]]
    if "frozenset" in config:
        return frozenset(_decode(item) for item in config["frozenset"])
    if "stage" in config:
        stage = _decode(config["stage"])
        if not isinstance(stage, Stage):
            raise ValueError(f"config names {type(stage).__qualname__}, which is not an adamfx stage")
        return stage.transform()
    if "class" in config:
        return _class(config["class"])(**{name: _decode(value) for name, value in config["fields"].items()})
    raise ValueError(f"not an adamfx transform config: {config!r}")


def _class(spec: str) -> type:
    module_name, _, qualname = spec.partition(":")
    if not module_name.startswith(_PACKAGE):
        raise ValueError(f"config names {spec!r}; only adamfx classes can be rebuilt from a config")
    cls = getattr(importlib.import_module(module_name), qualname, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"config names {spec!r}, which is not an adamfx dataclass")
    return cls


def _is_dtype(value: Any) -> bool:
    try:
        jnp.dtype(value)
    except TypeError:
        return False
    return True


def _describe(value: Any) -> str:
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    module = getattr(value, "__module__", None) or type(value).__module__
    return f"{module}.{name}"
