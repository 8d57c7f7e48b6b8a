"""How a network is named and rebuilt without pickle: its class path and constructor arguments.

A network is described by ``{"class": "module.QualName", "kwargs": {...}}`` (:func:`net_spec`),
the kwargs taken from ``net.config`` (a dict property, as :class:`~scidiff.nets.UNet` and
:class:`~scidiff.nets.NoisyEncoder` have) or given explicitly.  :func:`build_net` looks the class
up only in ``scidiff`` modules or modules already imported, checks that it is an
``nn.Module`` and calls it with the kwargs, so a saved description can never run arbitrary code.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any

from torch import nn

__all__ = ["NetSpecError", "net_spec", "build_net", "find_class"]


class NetSpecError(ValueError):
    """A network description cannot be stored or rebuilt; the message says what to pass instead."""


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with tuples turned into lists; raise if it is not JSON data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    raise NetSpecError(
        f"network constructor argument {where} = {value!r} ({type(value).__name__}) cannot be stored in JSON"
    )


def net_spec(net: nn.Module, net_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"class": "module.QualName", "kwargs": dict or None}: how to rebuild ``net``.

    kwargs come from ``net_config`` if given, else ``net.config`` (a dict, a dataclass, or a
    method returning one); None when neither exists (loading then needs ``net=``).
    """
    cls = type(net)
    kwargs: Any = net_config
    if kwargs is None:
        kwargs = getattr(net, "config", None)
        if callable(kwargs) and not isinstance(kwargs, dict):
            kwargs = kwargs()
        if dataclasses.is_dataclass(kwargs) and not isinstance(kwargs, type):
            kwargs = dataclasses.asdict(kwargs)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise NetSpecError(f"{cls.__name__}.config must be a dict of constructor arguments; got {type(kwargs).__name__}")
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kwargs": None if kwargs is None else _jsonable(kwargs, cls.__name__),
    }


def find_class(path: str, *, source: str = "the description") -> type[nn.Module]:
    """The ``nn.Module`` subclass named ``path`` in a scidiff module or an already imported one."""
    # the module is the longest importable prefix; qualnames of nested classes contain dots
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name, qualname = ".".join(parts[:cut]), ".".join(parts[cut:])
        if module_name in sys.modules or module_name == "scidiff" or module_name.startswith("scidiff."):
            try:
                module = sys.modules.get(module_name) or importlib.import_module(module_name)
            except ImportError:
                continue
            obj: Any = module
            try:
                for name in qualname.split("."):
                    obj = getattr(obj, name)
            except AttributeError:
                continue
            if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
                raise NetSpecError(f"{source} names network class {path!r}, which is not a torch.nn.Module")
            return obj
    raise NetSpecError(
        f"{source} names network class {path!r}, which is not in an imported module; import the module that "
        "defines it before loading, or pass net= an instance of the architecture"
    )


def build_net(spec: dict[str, Any], *, source: str = "the description") -> nn.Module:
    """Instantiate the network recorded by :func:`net_spec`."""
    path = spec.get("class")
    kwargs = spec.get("kwargs")
    if not isinstance(path, str):
        raise NetSpecError(f"{source} does not record the network class; pass net= to load it")
    if kwargs is None:
        raise NetSpecError(
            f"{source} records network class {path!r} but not its constructor arguments (the network had no "
            "`config` dict); pass net= an instance of the architecture"
        )
    cls = find_class(path, source=source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise NetSpecError(f"{source}: cannot rebuild {path}(**{kwargs}): {err}") from None
