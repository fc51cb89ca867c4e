"""The configs shipped inside the package, and how a ``--config`` value finds one.

Every journal config, recipe, study and sweep file lives once, in ``configs/`` at the top of the
repository; ``fashion_cnn/configs`` is a symbolic link to it, so setuptools copies the files into the
wheel as package data (``fashion_cnn/configs/...``) and ``fashion-cnn fit --config
configs/ultimate.yaml`` works in any folder after ``pip install``. A value is resolved in this order:

1. a file that exists at that path (relative to the working directory) wins;
2. otherwise ``configs/<name>.yaml``, ``<name>.yaml`` and bare names such as ``ultimate`` or
   ``studies/dropout`` name the packaged copy.

jsonargparse cannot read package resources itself, so a packaged config is handed over as a path.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile

from fashion_cnn.errors import ConfigError, UserError

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")


def packaged_root() -> Path:
    """The folder of the packaged configs (inside the installed package)."""
    return Path(str(files("fashion_cnn") / "configs"))


@dataclass(frozen=True)
class PackagedConfig:
    """One shipped config: its name (``studies/dropout``), file and one-line description."""

    name: str
    path: Path
    description: str


def packaged_configs() -> list[PackagedConfig]:
    """Every shipped config, sorted by name, with the first line of its header comment."""
    root = packaged_root()
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in SUFFIXES or not path.is_file():
            continue
        name = path.relative_to(root).with_suffix("").as_posix()
        found.append(PackagedConfig(name, path, _description(path)))
    return found


def _description(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            return text.lstrip("#").strip()
        if text:
            break
    return ""


def _packaged_name(value: str) -> str:
    """``configs/studies/dropout.yaml`` -> ``studies/dropout``."""
    name = value.replace(os.sep, "/").removeprefix("./").removeprefix("configs/")
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def resolve_config(value: str | os.PathLike[str], what: str = "--config") -> Path:
    """The file ``value`` names: an existing path, else the packaged config of that name.

    Raises:
        ConfigError: Neither exists; the message lists the nearest packaged names.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path
    name = _packaged_name(str(value))
    for suffix in SUFFIXES:
        candidate = packaged_root() / f"{name}{suffix}"
        if candidate.is_file():
            log.debug("%s %s: using the packaged config %s", what, value, candidate)  # a run's header says it
            return candidate
    if path.is_dir():
        raise ConfigError(f"{what} {value} is a folder; pass a YAML file or a packaged config name")
    names = [c.name for c in packaged_configs()]
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    hint = f"nearest packaged configs: {', '.join(near)}" if near else "see `fashion-cnn configs`"
    raise ConfigError(
        f"{what} {value} does not exist here, and no packaged config is named {name!r} ({hint}; "
        "`fashion-cnn configs` lists them all)"
    )


def copy_configs(destination: str | os.PathLike[str], force: bool = False) -> list[Path]:
    """Copy every packaged config into ``destination`` (created), keeping the ``studies/`` layout.

    Nothing is written when any target file exists and ``force`` is False.

    Raises:
        UserError: ``destination`` is a file, or would be overwritten without ``force``.
    """
    dest = Path(destination).expanduser()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"configs --copy {dest}: that is a file; pass a folder (it is created if missing)")
    root = packaged_root()
    pairs = [(c.path, dest / c.path.relative_to(root)) for c in packaged_configs()]
    clash = [target for _, target in pairs if target.exists()]
    if clash and not force:
        shown = ", ".join(str(p.relative_to(dest)) for p in clash[:3]) + (" ..." if len(clash) > 3 else "")
        raise UserError(
            f"configs --copy {dest}: {len(clash)} file(s) already there ({shown}); nothing was written. "
            "Pass --force to overwrite them, or copy into another folder."
        )
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [target for _, target in pairs]


class ConfigFileAction(ActionConfigFile):
    """jsonargparse's ``--config`` action, with packaged configs found by name (see above)."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        if isinstance(values, str) and _looks_like_a_file(values):
            try:
                values = str(resolve_config(values))
            except ConfigError as exc:
                parser.error(str(exc))
        super().__call__(parser, cfg, values, option_string)


def _looks_like_a_file(value: str) -> bool:
    """A path or a name rather than an inline YAML/JSON config (``{...}``, ``key: value``)."""
    text = value.strip()
    return bool(text) and "\n" not in text and not text.startswith(("{", "[")) and ": " not in text
