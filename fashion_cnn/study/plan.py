"""Planning a study: each variant's resolved config, the hash that identifies its runs, what is left.

Every variant is resolved through the CLI's own parser before the first run starts, so a typo in the
last variant does not surface hours in. The study hash covers what the runs compute, so a rerun of
the same command finds its parent run and runs only what is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_cnn.errors import ConfigError, StudyError
from fashion_cnn.legacy import translate_key
from fashion_cnn.lightning_cli import ConfigResolver
from fashion_cnn.runs.settings import as_args, digest, hashable, plain
from fashion_cnn.study.spec import RESERVED, Study, Variant
from fashion_cnn.tracking import resolve_tracking_uri

DEFAULT_EXPERIMENT = "fashion-cnn-studies"


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
    added: dict[str, list[int]] = field(default_factory=dict)  # adaptive seeds: variant -> seeds
    settled: bool = False  # adaptive seeds: no claim needs more (said once on the console)

    def seeds_of(self, variant: str) -> list[int]:
        """The variant's seeds: the study's, and those added to it to decide its claims."""
        return [*self.seeds, *self.added.get(variant, [])]

    def grow(self, variant: str, count: int) -> list[int]:
        """Give ``variant`` ``count`` seeds in all (the next unused numbers); returns the new ones."""
        have = self.seeds_of(variant)
        new = list(range(max(have) + 1, max(have) + 1 + count - len(have)))
        self.added[variant] = [*self.added.get(variant, []), *new]
        return new

    def samples(self) -> dict[str, dict[str, list[float]]]:
        """metric -> variant -> its finished seeds' values."""
        return {
            m.name: {
                vp.variant.name: [
                    float(run.data.metrics[m.name])
                    for seed in self.seeds_of(vp.variant.name)
                    if (run := self.finished.get((vp.variant.name, seed))) is not None
                    and m.name in run.data.metrics
                ]
                for vp in self.variants
            }
            for m in self.study.metrics
        }

    @property
    def todo(self) -> list[tuple[VariantPlan, int]]:
        return [
            (vp, seed)
            for vp in self.variants
            for seed in self.seeds_of(vp.variant.name)
            if (vp.variant.name, seed) not in self.finished
        ]

    @property
    def total(self) -> int:
        return sum(len(self.seeds_of(vp.variant.name)) for vp in self.variants)


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
        args = [*defaults, *as_args(study.overrides), *as_args(variant.overrides), *cli_overrides]
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
        left = [s for v, s in plan.todo if v is vp]
        config = vp.config.name if vp.config else "defaults"
        extra = " ".join(as_args(vp.variant.overrides))
        params = f"{vp.num_params:,} params"
        lines.append(f"  {vp.variant.name}: {config} {extra} ({params}); seeds to run: {left or 'none'}")
    return lines


# Fashion-MNIST's training split; the datamodule holds out data.val_size of it for validation.
TRAIN_IMAGES = 60_000


def images_per_run(resolved: Mapping[str, Any]) -> tuple[Any, int, int, int]:
    """(epochs, training images seen, validation images per epoch, test images) of one run."""
    trainer, data = resolved.get("trainer") or {}, resolved.get("data") or {}
    data = (data.get("init_args") or {}) if "class_path" in data else data  # or the flat old form
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
