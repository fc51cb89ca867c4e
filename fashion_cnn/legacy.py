"""The flat model hyperparameters of before issue 20 (``layers, filters, ..., optimizer: adam``).

Checkpoints written before the training system took its network, optimiser and scheduler by class
path hold 24 flat hyperparameters; study stores written before identify runs by a hash of those
flat settings. :func:`to_parts` maps old hyperparameters to the new ``net``/``optimizer``/
``scheduler`` specs (old checkpoints load); :func:`to_flat` maps a new model config back to the old
flat form wherever the old code could have run it (the study hash of an unchanged variant stays
the same, so finished runs are found).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fashion_cnn.components import import_class, option_values, read_config

NET = "fashion_cnn.FashionCNNNet"
# The old FashionCNN's network arguments (those the data links excluded: num_classes, ...).
NET_KEYS = (
    "layers",
    "filters",
    "kernel_size",
    "norm",
    "dropout",
    "norm_groups",
    "pool_every",
    "pool_after",
    "hidden",
)
LINKED_NET_KEYS = ("num_classes", "in_channels", "image_size")
# The old defaults of the training settings, each recorded in every old config whatever it chose.
OLD_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,
    "lr_scheduler": "plateau",
    "plateau_factor": 0.1,
    "plateau_patience": 10,
}
OPTIMIZERS = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}
SCHEDULERS = {
    "plateau": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "onecycle": "torch.optim.lr_scheduler.OneCycleLR",
    "cosine": "torch.optim.lr_scheduler.CosineAnnealingLR",
}
_NET_CLASSES = (NET, "fashion_cnn.network.FashionCNNNet")


def is_flat(hparams: Mapping[str, Any]) -> bool:
    """Whether hyperparameters are of the old flat form."""
    return "layers" in hparams and "net" not in hparams


def to_parts(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Old flat hyperparameters -> the new keyword arguments of :class:`~fashion_cnn.FashionCNN`."""
    hp = {**OLD_DEFAULTS, **dict(hparams)}
    net_args = {k: hp[k] for k in (*NET_KEYS, *LINKED_NET_KEYS) if k in hp}
    lr, decay = hp["lr"], hp["weight_decay"]
    optimizer: dict[str, Any] = {"lr": lr, "weight_decay": decay}
    if hp["optimizer"] == "sgd":
        optimizer.update(momentum=hp["momentum"], nesterov=hp["momentum"] > 0)
    scheduler: dict[str, Any] | None
    if hp["lr_scheduler"] == "plateau":
        scheduler = {"mode": "min", "factor": hp["plateau_factor"], "patience": hp["plateau_patience"]}
    elif hp["lr_scheduler"] == "onecycle":
        scheduler = {"max_lr": lr}
    elif hp["lr_scheduler"] == "cosine":
        scheduler = {}  # T_max: the run's max_epochs, filled in from the trainer
    else:
        scheduler = None
    out: dict[str, Any] = {
        "net": {"class_path": NET, "init_args": net_args},
        "optimizer": {"class_path": OPTIMIZERS[hp["optimizer"]], "init_args": optimizer},
        "scheduler": None
        if scheduler is None
        else {"class_path": SCHEDULERS[hp["lr_scheduler"]], "init_args": scheduler},
    }
    for key in ("label_smoothing", "channels_last", "compile", "input_mean", "input_std", "num_classes"):
        if key in hp:
            out[key] = hp[key]
    if "in_channels" in hp or "image_size" in hp:
        size = hp.get("image_size", 28)
        out["input_shape"] = [hp.get("in_channels", 1), size, size]
    return out


def _rest_default(class_path: str, init_args: Mapping[str, Any], used: set[str]) -> bool:
    """Whether every argument outside ``used`` has the class's default value."""
    try:
        params = inspect.signature(import_class(class_path)).parameters
    except Exception:
        return False
    for key, value in init_args.items():
        if key in used:
            continue
        param = params.get(key)
        if param is None or param.default is inspect.Parameter.empty:
            return False
        default = param.default
        if isinstance(default, tuple):
            default = list(default)
        if isinstance(value, tuple):
            value = list(value)
        if value != default:
            return False
    return True


def _short(class_path: Any) -> str:
    """The name the table above uses for the class a path names (``torch.optim.adam.Adam`` ->
    ``torch.optim.Adam``); other paths unchanged."""
    try:
        cls = import_class(str(class_path))
    except Exception:
        return str(class_path)
    for full in (*OPTIMIZERS.values(), *SCHEDULERS.values(), *_NET_CLASSES):
        if import_class(full) is cls:
            return NET if full in _NET_CLASSES else full
    return str(class_path)


def to_flat(model: Mapping[str, Any]) -> dict[str, Any] | None:
    """A new resolved ``model`` config in the old flat form, or None if it has no such form (another
    network class, optimiser or scheduler, or one with other arguments). Skip connections, which
    the old network lacked, appear as ``skip: true`` only when on, so every old model keeps its
    form and the study reports name the one setting a skip variant changes."""
    model = dict(model)
    net, opt, sched = model.pop("net", None), model.pop("optimizer", None), model.pop("scheduler", None)
    if not (isinstance(net, Mapping) and _short(net.get("class_path")) == NET and isinstance(opt, Mapping)):
        return None
    net_args = dict(net.get("init_args") or {})
    if net_args.pop("skip", False):
        net_args["skip"] = True  # new: recorded only when on (off: the old network, the old hash)
    for key in LINKED_NET_KEYS:
        net_args.pop(key, None)
    flat: dict[str, Any] = {**net_args, **OLD_DEFAULTS}
    opt_path, opt_args = _short(opt.get("class_path")), dict(opt.get("init_args") or {})
    names = {v: k for k, v in OPTIMIZERS.items()}
    if opt_path not in names:
        return None
    flat["optimizer"] = names[opt_path]
    flat["lr"] = opt_args.get("lr", 1e-3)
    flat["weight_decay"] = opt_args.get("weight_decay", 0.0)
    used = {"lr", "weight_decay"}
    if flat["optimizer"] == "sgd":
        flat["momentum"] = opt_args.get("momentum", 0.0)
        if bool(opt_args.get("nesterov", False)) != (flat["momentum"] > 0):
            return None
        used |= {"momentum", "nesterov"}
    if not _rest_default(opt_path, opt_args, used):
        return None
    if sched is None:
        flat["lr_scheduler"] = "none"
    else:
        if not isinstance(sched, Mapping):
            return None
        s_path, s_args = _short(sched.get("class_path")), dict(sched.get("init_args") or {})
        s_names = {v: k for k, v in SCHEDULERS.items()}
        if s_path not in s_names:
            return None
        flat["lr_scheduler"] = s_names[s_path]
        if flat["lr_scheduler"] == "plateau":
            if s_args.get("mode", "min") != "min":
                return None
            flat["plateau_factor"] = s_args.get("factor", 0.1)
            flat["plateau_patience"] = s_args.get("patience", 10)
            s_used = {"mode", "factor", "patience"}
        elif flat["lr_scheduler"] == "onecycle":
            if s_args.get("max_lr") != flat["lr"] or s_args.get("total_steps") is not None:
                return None
            s_used = {"max_lr", "total_steps"}
        else:
            if s_args.get("T_max") is not None:
                return None
            s_used = {"T_max"}
        if not _rest_default(s_path, s_args, s_used):
            return None
    for key in ("label_smoothing", "channels_last", "compile"):
        if key in model:
            flat[key] = model.pop(key)
    for key in ("num_classes", "input_shape", "input_mean", "input_std"):
        model.pop(key, None)  # linked from the data; the old hash did not hold them either
    if model:
        return None  # a setting the old model did not have
    return flat


# The old flat keys that still work in study/sweep files and on the command line, as aliases of
# the new nested ones (``model.dropout`` -> ``model.net.init_args.dropout``; on the command line and
# in study overrides jsonargparse also takes the short ``model.net.dropout``).
ALIASES: dict[str, str] = {
    **{f"model.{k}": f"model.net.init_args.{k}" for k in NET_KEYS},
    "model.lr": "model.optimizer.init_args.lr",
    "model.weight_decay": "model.optimizer.init_args.weight_decay",
}


def translate_key(key: str) -> str:
    """An old flat model key as its new nested key; any other key unchanged."""
    return ALIASES.get(key, key)


def translate_args(args: list[str]) -> list[str]:
    """``--model.dropout 0.3`` / ``--model.dropout=0.3`` -> ``--model.net.init_args.dropout ...``."""
    out = []
    for arg in args:
        if arg.startswith("--model."):
            key, sep, value = arg[2:].partition("=")
            arg = f"--{translate_key(key)}{sep}{value}"
        out.append(arg)
    return out


def check_flat(hp: Mapping[str, Any]) -> None:
    """Fail at construction, naming the argument, for old flat values that would only break mid-run."""
    hp = {**OLD_DEFAULTS, **dict(hp)}
    if hp["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer={hp['optimizer']!r} is unknown; use one of {tuple(OPTIMIZERS)}")
    if hp["lr_scheduler"] not in (*SCHEDULERS, "none"):
        raise ValueError(
            f"lr_scheduler={hp['lr_scheduler']!r} is unknown; use one of {(*SCHEDULERS, 'none')}"
        )
    if not hp["lr"] > 0:
        raise ValueError(f"lr={hp['lr']!r} must be > 0, e.g. 1e-3")
    if hp["weight_decay"] < 0:
        raise ValueError(f"weight_decay={hp['weight_decay']!r} must be >= 0")
    if not 0 <= hp["momentum"] < 1:
        raise ValueError(f"momentum={hp['momentum']!r} must be in [0, 1), e.g. 0.9")
    if not 0 < hp["plateau_factor"] < 1:
        raise ValueError(f"plateau_factor={hp['plateau_factor']!r} must be in (0, 1), e.g. 0.1")
    if hp["plateau_patience"] < 0:
        raise ValueError(f"plateau_patience={hp['plateau_patience']!r} must be >= 0")


FLAT_KEYS = frozenset((*NET_KEYS, *LINKED_NET_KEYS, *OLD_DEFAULTS))
# The old flat keys with no alias (the optimiser's and scheduler's), as the options that replace them.
_REPLACED = {
    "lr_scheduler": "--model.scheduler=torch.optim.lr_scheduler.CosineAnnealingLR (a class path, or null)",
    "momentum": "--model.optimizer=torch.optim.SGD --model.optimizer.momentum=0.9",
    "plateau_factor": "--model.scheduler.factor=0.1 (ReduceLROnPlateau, the default scheduler)",
    "plateau_patience": "--model.scheduler.patience=10 (ReduceLROnPlateau, the default scheduler)",
}


def diagnose(args: Sequence[str], config_files: Iterable[str | Path]) -> str | None:
    """A one-line message for settings written in the old flat form that have no alias: a config
    file whose ``model:`` is flat (the message gives its new form to paste), or a command-line
    optimiser or scheduler by its old short name. None when there is none."""
    for path in config_files:
        tree = read_config(path)
        model = tree.get("model") if isinstance(tree, Mapping) else None
        if not isinstance(model, Mapping) or not (old := _flat_keys(model)):
            continue
        new = to_parts(model)
        if not set(old) & set(NET_KEYS):
            new.pop("net")
        if not set(old) & {"optimizer", "lr", "weight_decay", "momentum"}:
            new.pop("optimizer")
        if not set(old) & {"lr_scheduler", "plateau_factor", "plateau_patience"}:
            new.pop("scheduler")
        text = yaml.safe_dump(new, default_flow_style=True, width=10**6, sort_keys=False).strip()
        return (
            f"{path}: its model: section uses the old flat keys ({', '.join(old)}); the network, "
            f"optimiser and scheduler now go by class path. Replace the section with: model: {text}"
        )
    flags = [f"--model.{name}" for name in (*_REPLACED, "optimizer")]
    for flag, value in option_values(args, flags):
        name = flag.removeprefix("--model.")
        if name == "optimizer":
            if value not in OPTIMIZERS:
                continue  # a class path: the parser's to judge
            return f"{flag}={value} is the old short name; give the class path: {flag}={OPTIMIZERS[value]}"
        return f"{flag} is the old flat option; now: {_REPLACED[name]}"
    return None


def _flat_keys(model: Mapping[str, Any]) -> list[str]:
    """The keys of a ``model:`` section that only the old flat form has."""
    old = [k for k in model if k in FLAT_KEYS and k != "optimizer"]
    if isinstance(model.get("optimizer"), str) and model["optimizer"] in OPTIMIZERS:
        old.insert(0, "optimizer")
    return old
