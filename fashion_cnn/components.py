"""The pluggable parts of a run given by class path: the network, optimiser, scheduler and data.

A part is written as jsonargparse writes it, ``{class_path: my_nets.TinyResNet, init_args: {...}}``.
This module turns such a spec into the object (:func:`build_module`, :func:`as_factory`), an object
back into a spec that a checkpoint can store as plain data (:func:`spec_of`), checks what a part
must satisfy before any training (:func:`check_output_shape`, :func:`check_datamodule`), and names
the problem when a class path does not import or is of the wrong kind (:func:`diagnose`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from fashion_cnn.configs import resolve_config
from fashion_cnn.errors import ConfigError

# What each pluggable option must be: (option, base classes, what it is in words).
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "model.net": (("torch.nn.Module",), "a torch.nn.Module"),
    "model.optimizer": (("torch.optim.Optimizer",), "a torch.optim optimiser"),
    "model.scheduler": (
        ("torch.optim.lr_scheduler.LRScheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"),
        "a torch.optim.lr_scheduler scheduler",
    ),
    "data": (("lightning.pytorch.LightningDataModule",), "a LightningDataModule"),
}


def class_path_of(cls: type) -> str:
    """``torch.optim.adam.Adam`` -> ``torch.optim.adam.Adam`` (module and qualified name)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str, option: str = "class_path") -> type:
    """The class a dotted path names.

    Raises:
        ConfigError: The module does not import (naming the module and its import error), it has
            no such attribute, or the attribute is not a class.
    """
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ConfigError(
            f"{option} {path}: give the full import path, e.g. my_nets.TinyResNet (the module must be "
            "importable: on PYTHONPATH or installed)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error while importing the user's module is theirs to fix
        raise ConfigError(
            f"{option} {path}: module {module_name!r} does not import ({type(exc).__name__}: {exc}); "
            "check the name, and that its folder is on PYTHONPATH (e.g. PYTHONPATH=. fashion-cnn ...)"
        ) from None
    found = getattr(module, name, None)
    if not isinstance(found, type):
        what = "has no attribute" if found is None else "has a non-class"
        raise ConfigError(f"{option} {path}: module {module_name!r} {what} {name!r}; give a class")
    return found


def _is_kind(cls: type, option: str) -> bool:
    bases, _ = KINDS[option]
    for base in bases:
        module_name, _, name = base.rpartition(".")
        if issubclass(cls, getattr(importlib.import_module(module_name), name)):
            return True
    return False


def check_kind(cls: type, option: str) -> None:
    """Raise :class:`ConfigError` unless ``cls`` is of the kind ``option`` needs."""
    if option in KINDS and not _is_kind(cls, option):
        raise ConfigError(
            f"{option} {class_path_of(cls)} is not {KINDS[option][1]}; give a class that is "
            f"(e.g. {_EXAMPLES[option]})"
        )


_EXAMPLES = {
    "model.net": "fashion_cnn.FashionCNNNet or my_nets.TinyResNet",
    "model.optimizer": "torch.optim.AdamW",
    "model.scheduler": "torch.optim.lr_scheduler.OneCycleLR",
    "data": "fashion_cnn.FashionMNISTDataModule",
}


# --------------------------------------------------------------------------------------------
# Specs <-> objects


def spec_of(value: Any) -> dict[str, Any] | None:
    """A plain-data spec ``{class_path, init_args}`` for a part, as a checkpoint stores it.

    Accepts a spec (returned as plain dicts), a class (no arguments), a ``functools.partial`` of a
    class (as jsonargparse builds an optimiser or scheduler callable) or an ``nn.Module`` that
    records its ``init_args`` (as :class:`~fashion_cnn.FashionCNNNet` does; other modules are
    recorded by class only and cannot be rebuilt from the spec alone).
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        return _plain(dict(value))
    if isinstance(value, type):
        return {"class_path": class_path_of(value), "init_args": {}}
    if isinstance(value, functools.partial):
        cls = next((a for a in (value.func, *value.args) if isinstance(a, type)), None)
        if cls is not None:
            return {"class_path": class_path_of(cls), "init_args": _plain(dict(value.keywords))}
    if isinstance(value, nn.Module):
        return {
            "class_path": class_path_of(type(value)),
            "init_args": _plain(getattr(value, "init_args", {})),
        }
    raise TypeError(f"{value!r} is not a class, a partial of a class, a module or a class-path spec")


def _plain(value: Any) -> Any:
    """Tuples as lists and Namespaces as dicts, so a spec is YAML/JSON and weights_only safe."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def accepted(cls: type, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``init_args`` less the keys ``cls`` does not take (links give every network the data's
    num_classes and input shape; a network without those arguments ignores them)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(init_args)
    return {k: v for k, v in init_args.items() if k in params}


def build_module(spec: Mapping[str, Any], option: str = "model.net") -> nn.Module:
    """Instantiate the ``nn.Module`` a spec names."""
    cls = import_class(str(spec["class_path"]), option)
    check_kind(cls, option)
    return cls(**dict(spec.get("init_args") or {}))


def as_factory(spec: Mapping[str, Any], option: str) -> Callable[..., Any]:
    """The optimiser or scheduler a spec names, as a callable that takes the parameters (or the
    optimiser) and any arguments the trainer fills in."""
    cls = import_class(str(spec["class_path"]), option)
    check_kind(cls, option)
    return functools.partial(cls, **dict(spec.get("init_args") or {}))


def factory_class(factory: Callable[..., Any]) -> type | None:
    """The class a factory builds (a class, or a partial of one as jsonargparse makes them)."""
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        return next((a for a in (factory.func, *factory.args) if isinstance(a, type)), None)
    return None


def factory_kwargs(factory: Callable[..., Any]) -> dict[str, Any]:
    """The arguments a factory already holds."""
    return dict(factory.keywords) if isinstance(factory, functools.partial) else {}


# --------------------------------------------------------------------------------------------
# Checks before any training


def check_output_shape(net: nn.Module, input_shape: Sequence[int], num_classes: int) -> None:
    """One forward pass of two zero images (eval mode, no gradients) must give (2, num_classes).

    Raises:
        ConfigError: The network fails on the data's input shape or returns another shape.
    """
    expected = (2, num_classes)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *input_shape))
    except Exception as exc:  # the user's network: any error means it does not fit the data
        raise ConfigError(
            f"model.net {class_path_of(type(net))} fails on a batch of the data's input shape "
            f"(2, {', '.join(map(str, input_shape))}) ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "make it accept (batch, channels, height, width) as the data gives them"
        ) from None
    finally:
        net.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != expected:
        raise ConfigError(
            f"model.net {class_path_of(type(net))} returned {shape} for input (2, "
            f"{', '.join(map(str, input_shape))}); expected (batch, num_classes) = {expected}. Make "
            "its last layer output num_classes logits (take num_classes as an argument to have it "
            "linked from the data)"
        )


# The attributes the training system reads from a DataModule (the protocol, data.DataProtocol).
DATA_PROTOCOL = ("num_classes", "input_shape", "input_mean", "input_std", "class_names")


def check_datamodule(datamodule: Any) -> None:
    """Raise :class:`ConfigError` naming the first protocol attribute ``datamodule`` lacks."""
    for name in DATA_PROTOCOL:
        if not hasattr(datamodule, name):
            raise ConfigError(
                f"data {class_path_of(type(datamodule))} has no {name!r}: a DataModule gives "
                f"{', '.join(DATA_PROTOCOL)} (fashion_cnn.data.DataProtocol; docs/extending.md)"
            )


# --------------------------------------------------------------------------------------------
# What the CLI links from the data


def _protocol(name: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], Any]:
    """A link's compute function: the DataModule's protocol attribute ``name``, converted."""

    def read(datamodule: Any) -> Any:
        check_datamodule(datamodule)
        return convert(getattr(datamodule, name))

    read.__name__ = f"read_{name}"
    return read


# (target, how it is read from the DataModule). The network links reach only networks that take
# the argument (FashionCNNNet takes num_classes, in_channels and image_size).
LINKS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("model.num_classes", _protocol("num_classes")),
    ("model.input_shape", _protocol("input_shape", tuple)),
    ("model.input_mean", _protocol("input_mean")),
    ("model.input_std", _protocol("input_std")),
    ("model.net.init_args.num_classes", _protocol("num_classes")),
    ("model.net.init_args.in_channels", _protocol("input_shape", lambda s: s[0])),
    ("model.net.init_args.image_size", _protocol("input_shape", lambda s: s[1])),
    ("model.net.init_args.input_shape", _protocol("input_shape", tuple)),
)


def option_values(args: Sequence[str], flags: Iterable[str]) -> list[tuple[str, str | None]]:
    """``(flag, value)`` for each of ``flags`` among CLI arguments, in their order: ``--flag value``,
    ``--flag=value`` (long flags only) or ``-c value``; the value is None for a flag that ends them."""
    wanted, args = set(flags), list(args)
    found: list[tuple[str, str | None]] = []
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in wanted:
            found.append((flag, value if eq else args[i + 1] if i + 1 < len(args) else None))
    return found


def read_config(path: str | Path) -> Any:
    """A config file's YAML tree, or None if it does not read or parse (the parser will say why)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def config_files(args: Sequence[str]) -> list[str]:
    """The --config files among CLI arguments (as they resolve), for error diagnosis."""
    found = []
    for _, value in option_values(args, ("-c", "--config")):
        if value:
            with contextlib.suppress(ConfigError):
                found.append(str(resolve_config(value)))
    return found


# --------------------------------------------------------------------------------------------
# Naming the problem when a class path does not parse


def diagnose(args: Sequence[str], config_files: Iterable[str | Path] = ()) -> str | None:
    """The first class path among ``args`` and config files that does not import or is of the
    wrong kind, as a one-line message; None when all are fine (the parser's message stands)."""
    for option, value in _class_paths(args, config_files):
        if "." not in value:
            continue  # a short name jsonargparse resolves among imported subclasses
        try:
            check_kind(import_class(value, option), option)
        except ConfigError as exc:
            return str(exc)
    return None


def _class_paths(args: Sequence[str], config_files: Iterable[str | Path]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in config_files:
        tree = read_config(path) or {}
        for option in KINDS:
            node: Any = tree
            for part in option.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            value = node.get("class_path") if isinstance(node, Mapping) else node
            if isinstance(value, str):
                found.append((option, value))
    flags = {flag: option for option in KINDS for flag in (f"--{option}", f"--{option}.class_path")}
    found += [(flags[flag], value) for flag, value in option_values(args, flags) if value is not None]
    return [(o, v) for o, v in found if not v.lstrip().startswith(("{", "["))]
