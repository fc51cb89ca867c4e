"""Planning a study: each variant's resolved config, the hash that identifies its runs, what is left.

Every variant's config is resolved through the CLI's own parser (:class:`ConfigResolver`) before
the first run starts, so a typo in the last variant does not surface hours in. The study hash covers
what the runs compute (the resolved configs less the settings that only name or place runs), so a
rerun of the same command finds its parent run and runs only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_cnn.components import import_class
from fashion_cnn.errors import ConfigError, StudyError
from fashion_cnn.experiment import ConfigResolver
from fashion_cnn.legacy import to_flat, translate_key
from fashion_cnn.study.spec import RESERVED, Study, Variant
from fashion_cnn.tracking import resolve_tracking_uri

DEFAULT_EXPERIMENT = "fashion-cnn-studies"

# Keys left out of the hash that identifies a study's runs: they name or place runs, or are set
# per run, but do not change what a run computes. Changing this list changes every study's hash
# (and so which finished runs a rerun finds); tests/test_study_plan.py pins the shipped hashes.
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


@dataclass
class VariantPlan:
    """One variant, resolved."""

    variant: Variant
    config: Path | None
    args: list[str]  # CLI arguments shared by all seeds (without seed, names and tags)
    resolved: dict[str, Any]  # the full config LightningCLI resolves from them
    as_configured: dict[str, Any] | None  # resolved without the command-line overrides
    num_params: int

    @property
    def config_hash(self) -> str:
        """Hash of what this variant's runs compute (its resolved config, less names and places)."""
        return digest(hashable(self.resolved))


@dataclass
class StudyPlan:
    """A study with every variant resolved, and what the tracking store already holds of it."""

    study: Study
    variants: list[VariantPlan]
    seeds: list[int]
    cli_overrides: list[str]
    study_hash: str
    tracking_uri: str
    experiment: str
    output: Path
    parent_id: str | None = None
    finished: dict[tuple[str, int], Any] = field(default_factory=dict)  # (variant, seed) -> Run

    @property
    def todo(self) -> list[tuple[VariantPlan, int]]:
        return [
            (vp, seed)
            for vp in self.variants
            for seed in self.seeds
            if (vp.variant.name, seed) not in self.finished
        ]

    @property
    def total(self) -> int:
        return len(self.variants) * len(self.seeds)


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """Dotted-key overrides as ``--key=value`` CLI strings (JSON for non-strings, as the CLI reads)."""
    return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]


def run_overrides(groups: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """``{"trainer": {"max_epochs": 1}}`` (as the study command parses them) -> dotted keys.

    Raises:
        StudyError: For a key the study sets itself.
    """
    flat: dict[str, Any] = {}
    for group, values in groups.items():
        for key, value in (values or {}).items():
            flat[translate_key(f"{group}.{key}")] = plain(value)
    for key in flat:
        if key in RESERVED:
            raise StudyError(f"--{key} cannot be set for a study: {RESERVED[key]}")
    return flat


def plain(value: Any) -> Any:
    """jsonargparse hands nested class configs over as Namespaces: plain dicts and lists instead."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def plan_study(
    study: Study,
    cli_overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    output: str | Path | None = None,
    resolver: ConfigResolver | None = None,
) -> StudyPlan:
    """Resolve every variant's config through the CLI's parser and hash what the runs depend on.

    Args:
        study: The loaded study file.
        cli_overrides: ``--key=value`` strings applied to every run, after the study's own.
        seeds: Seeds instead of the study file's.
        experiment: MLflow experiment of the parent and child runs.
        output: Report folder (default ``studies/<name>``); runs go to ``<output>/runs``.
        resolver: A resolver to reuse (building one takes about half a second).

    Raises:
        StudyError: If a variant's settings do not parse or build a model, naming the variant.
    """
    from fashion_cnn.system import FashionCNN

    resolver = resolver or ConfigResolver()
    output = Path(output) if output is not None else Path("studies") / study.name
    variant_plans = []
    for variant in study.variants:
        config = variant.config or study.base
        defaults = [
            "--trainer.enable_progress_bar=false",  # the study shows its own progress
            "--trainer.enable_model_summary=false",
            f"--output_dir={output / 'runs'}",
        ]
        args = [*defaults, *override_args(study.overrides), *override_args(variant.overrides), *cli_overrides]
        where = f"study {study.name}, variant {variant.name}"
        resolved = _resolve(resolver, config, args, where)
        as_configured = (
            _resolve(resolver, config, args[: len(args) - len(cli_overrides)], where)
            if cli_overrides
            else None
        )
        try:
            num_params = FashionCNN(**(resolved.get("model") or {})).num_params
        except (TypeError, ValueError) as exc:
            raise StudyError(f"{where}: the model cannot be built: {exc}") from None
        logger = (resolved.get("trainer") or {}).get("logger") or {}
        if not (isinstance(logger, Mapping) and str(logger.get("class_path", "")).endswith("MLflowLogger")):
            raise StudyError(
                f"{where}: studies need the MLflow logger (trainer.logger: "
                "fashion_cnn.tracking.MLflowLogger); remove the other logger from the config"
            )
        variant_plans.append(VariantPlan(variant, config, args, resolved, as_configured, num_params))

    uris = {
        (vp.resolved["trainer"]["logger"].get("init_args") or {}).get("tracking_uri") for vp in variant_plans
    }
    if len(uris) > 1:
        raise StudyError(
            f"study {study.name}: variants log to different tracking URIs {sorted(map(str, uris))}; "
            "set one for the whole study"
        )
    return StudyPlan(
        study=study,
        variants=variant_plans,
        seeds=list(seeds) if seeds is not None else list(study.seeds),
        cli_overrides=list(cli_overrides),
        study_hash=digest({vp.variant.name: hashable(vp.resolved) for vp in variant_plans}),
        tracking_uri=resolve_tracking_uri(uris.pop()),
        experiment=experiment,
        output=output,
    )


def _resolve(
    resolver: ConfigResolver, config: Path | None, args: Sequence[str], where: str
) -> dict[str, Any]:
    try:
        # --seed_everything=0 stands in for every seed (seeds are not hashed).
        return resolver.resolve(config, [*args, "--seed_everything=0"])
    except ConfigError as exc:
        raise StudyError(
            f"{where}: its settings do not parse: {exc} (from the study file or the command-line overrides)"
        ) from None


def digest(tree: Any) -> str:
    """A short, stable hash of plain data."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def hashable(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The flat settings of a resolved config that change what a run computes, in canonical form."""
    flat = flatten(canonical(resolved))
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_HASHED)}


def canonical(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config in the form the study hash was computed from before issue 20.

    Configs name the network, optimiser, scheduler and data by class path since then
    (``model.net: {class_path, init_args}``). A variant the old flat settings could express (the
    journal's network, Adam/AdamW/SGD, ReduceLROnPlateau/OneCycleLR/cosine/none, Fashion-MNIST) is
    hashed in that old form, so its hash, and the finished runs a rerun finds by it, stay the same
    (tests/test_study_run.py pins the shipped hashes). Anything new (another network or
    optimiser, skip connections, another DataModule) is hashed as written.
    """
    tree = dict(resolved)
    model = tree.get("model")
    if isinstance(model, Mapping):
        old = to_flat(model)
        if old is not None:
            tree["model"] = old
    data = tree.get("data")
    if isinstance(data, Mapping) and _is_fashion_mnist(data.get("class_path")):
        tree["data"] = dict(data.get("init_args") or {})
    return tree


def _is_fashion_mnist(class_path: Any) -> bool:
    from fashion_cnn.data import FashionMNISTDataModule

    try:
        return import_class(str(class_path)) is FashionMNISTDataModule
    except ConfigError:
        return False


def data_settings(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The DataModule's settings of a resolved config (its init_args, or the flat old form)."""
    data = resolved.get("data") or {}
    return dict(data.get("init_args") or {}) if "class_path" in data else dict(data)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def identical_variants(plan: StudyPlan) -> list[list[str]]:
    """Groups of variants whose resolved configs are the same (only seeds tell them apart)."""
    groups: dict[str, list[str]] = {}
    for vp in plan.variants:
        key = json.dumps(hashable(vp.resolved), sort_keys=True, default=str)
        groups.setdefault(key, []).append(vp.variant.name)
    return [g for g in groups.values() if len(g) > 1]


def describe_plan(plan: StudyPlan) -> list[str]:
    """Lines for ``--dry_run``: each variant, its settings and which seeds are left."""
    lines = [
        f"[{plan.study.name}] {plan.study.title}: hash {plan.study_hash}, parent run "
        f"{plan.parent_id or '(new)'}, output {plan.output}"
    ]
    for vp in plan.variants:
        left = [s for s in plan.seeds if (vp.variant.name, s) not in plan.finished]
        config = vp.config.name if vp.config else "defaults"
        extra = " ".join(override_args(vp.variant.overrides))
        lines.append(
            f"  {vp.variant.name}: {config} {extra} ({vp.num_params:,} params); "
            f"seeds to run: {left or 'none'}"
        )
    return lines


# Fashion-MNIST's training split; the datamodule holds out data.val_size of it for validation.
TRAIN_IMAGES = 60_000


def images_per_run(resolved: Mapping[str, Any]) -> tuple[Any, int, int, int]:
    """(epochs, training images seen, validation images per epoch, test images) of one run."""
    trainer, data = resolved.get("trainer") or {}, data_settings(resolved)
    batch, val = int(data.get("batch_size") or 64), int(data.get("val_size") or 0)
    eval_batch = int(data.get("eval_batch_size") or max(batch, 256))

    def count(limit: Any, total: int, size: int) -> int:
        batches = math.ceil(total / size)
        if limit is None:
            return total
        if isinstance(limit, float) and limit <= 1.0:
            return min(total, int(batches * limit) * size)
        return min(total, int(limit) * size)

    epochs = trainer.get("max_epochs")
    per_epoch = count(trainer.get("limit_train_batches"), TRAIN_IMAGES - val, batch)
    return (
        epochs,
        per_epoch * int(epochs or 1),
        count(trainer.get("limit_val_batches"), val, eval_batch),
        count(trainer.get("limit_test_batches"), 10_000, eval_batch),
    )
