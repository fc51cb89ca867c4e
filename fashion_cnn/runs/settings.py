"""A run's config as plain data: dotted overrides, CLI arguments, the hash of what it computes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Keys left out of the hash that identifies what a run computes: they name or place runs, or are
# set per run, but do not change what a run computes. Changing this list changes every study's hash
# (and so which finished runs a rerun finds); tests/test_study.py pins the shipped hashes.
NOT_HASHED = (
    "seed_everything",
    "run_name",
    "config",
    "output_dir",
    "predictions_file",
    "ckpt_path",
    "checkpoint.root",
    "checkpoint.dirpath",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)

# A study's or sweep's name: it names runs and folders.
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")


def as_args(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """Overrides as CLI strings: a mapping of dotted keys becomes ``--key=value`` (see :func:`word`);
    strings stay as they are."""
    if isinstance(overrides, Mapping):
        return [f"--{k}={word(v)}" for k, v in overrides.items()]
    return list(overrides)


def word(value: Any) -> str:
    """A value as one command-line word, as the CLI reads it back: a string as it is, else JSON."""
    return value if isinstance(value, str) else json.dumps(plain(value))


def plain(value: Any) -> Any:
    """jsonargparse hands nested class configs over as Namespaces: plain dicts and lists instead."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(tree, Mapping):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree["model"]["lr"] = value`` for ``key`` ``model.lr`` (missing levels created)."""
    *path, last = key.split(".")
    for part in path:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[last] = value


def digest(tree: Any) -> str:
    """A short, stable hash of plain data."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def hashable(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The flat settings of a resolved config that change what a run computes, in canonical form."""
    flat = flatten(canonical(resolved))
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_HASHED)}


def canonical(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config in the form run hashes were computed from before networks, optimisers and
    data became class paths.

    A config the old flat settings could express (the journal's network, Adam/AdamW/SGD,
    ReduceLROnPlateau/OneCycleLR/cosine/none, Fashion-MNIST) is hashed in that old form, so its
    hash, and the finished runs (and sweep settings) a rerun finds by it, stay the same
    (tests/test_study_run.py pins the shipped study hashes). Anything new is hashed as written.
    """
    from fashion_cnn.components import import_class
    from fashion_cnn.data import FashionMNISTDataModule
    from fashion_cnn.errors import ConfigError
    from fashion_cnn.legacy import to_flat

    tree = dict(resolved)
    model, data = tree.get("model"), tree.get("data")
    if isinstance(model, Mapping) and (old := to_flat(model)) is not None:
        tree["model"] = old
    if isinstance(data, Mapping):
        try:
            fashion_mnist = import_class(str(data.get("class_path"))) is FashionMNISTDataModule
        except ConfigError:
            fashion_mnist = False
        if fashion_mnist:
            tree["data"] = dict(data.get("init_args") or {})
    return tree


def typed(
    schema: type,
    raw: Mapping[str, Any],
    where: str,
    error: type[Exception],
    noun: str = "key",
    missing: Mapping[str, str] | None = None,
    fixes: Mapping[str, str] | None = None,
    nullable: Sequence[str] = (),
    shorten: bool = False,
) -> Any:
    """``raw`` (a mapping from a YAML file) as an instance of the dataclass ``schema``, type-checked
    by jsonargparse; anything wrong is one ``error`` naming ``where``, the field and the fix.

    Args:
        noun: What the file calls a field in messages (``unknown key 'x'``).
        missing: Field -> what to write when a required field is missing.
        fixes: Field -> what to write instead, appended to a wrong type's message.
        nullable: Fields whose ``null`` is a value (others' ``null`` means unset).
        shorten: Report a wrong type as ``expected float, got 'abc'`` instead of jsonargparse's words.
    """
    import copy
    import dataclasses
    import difflib

    from jsonargparse import ArgumentParser

    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(fields)}"
            raise error(f"{where}: unknown {noun} {key!r}; {hint}")
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in raw:
            hint = (missing or {}).get(name, f"see {schema.__name__} in the docs")
            raise error(f"{where}: {name}: missing; {hint}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(schema, as_positional=False)
    try:
        # A deep copy: jsonargparse converts nested values in place, and the items are typed later.
        parsed = parser.parse_object(
            copy.deepcopy({k: v for k, v in raw.items() if v is not None or k in nullable})
        )
    except Exception as exc:  # jsonargparse's ArgumentError: 'Parser key "seeds": ...'
        message = " ".join(str(exc).split())
        match = re.match(r'Parser key "([^"]+)":\s*(.*)', message)
        key, text = (match.group(1), match.group(2)) if match else ("", message)
        # A union's report ("Does not validate against any of the Union subtypes ...") shortened.
        given = re.search(r"Given value: (.*)$", text)
        expected = re.search(r"Expected a <class '(\w+)'>", text)
        if shorten and given and expected:
            text = f"expected {expected.group(1)}, got {given.group(1)!r}"
        fix = (fixes or {}).get(key.split(".")[0])
        raise error(
            f"{where}: {key + ': ' if key else ''}{text}" + (f"; write {fix}" if fix else "")
        ) from None
    return schema(**{name: parsed.get(name) for name in fields if name in parsed})


def defaults_of(*sources: Any) -> dict[str, Any]:
    """The defaults of the fields of dataclasses and the parameters of functions, by name."""
    import dataclasses
    import inspect

    found: dict[str, Any] = {}
    for source in sources:
        if dataclasses.is_dataclass(source):
            found.update({f.name: f.default for f in dataclasses.fields(source)})
        else:
            found.update({k: p.default for k, p in inspect.signature(source).parameters.items()})
    return found


def command_line(
    command: str,
    positional: Sequence[str],
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    groups: Sequence[str] = (),
) -> str:
    """``fashion-cnn COMMAND POSITIONAL --option value ...``: the options of ``given`` that are not
    at their default (those in ``groups`` as ``--group.key value``), so the line does the same."""
    import shlex

    words = ["fashion-cnn", command, *positional]
    for name, value in given.items():
        if name in defaults and value == defaults[name]:
            continue
        if name in groups and isinstance(value, Mapping):
            words += [w for key, v in value.items() for w in (f"--{name}.{key}", word(v))]
        else:
            words += [f"--{name}", word(value)]
    return shlex.join(words)
