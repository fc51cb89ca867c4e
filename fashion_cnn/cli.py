"""The ``fashion-cnn`` command: one parser for every subcommand, and user errors as one clear line.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (:class:`FashionCLI`); ``study``,
``export``, ``sweep`` and ``configs`` are typed functions below, registered as subcommands of the
same parser. So ``fashion-cnn --help`` lists them all and every one takes ``--config`` and
``--print_config`` with snake_case options. This is the only module that prints or exits; the
library it calls logs and raises.
"""

from __future__ import annotations

import inspect
import logging
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from jsonargparse import ActionYesNo, capture_parser
from jsonargparse import ArgumentParser as JsonArgumentParser

from fashion_cnn.configs import ConfigFileAction
from fashion_cnn.errors import Interrupted, UserError
from fashion_cnn.experiment import TRAINER_SUBCOMMANDS, ArgumentParser, FashionCLI, run_cli, run_experiment

__all__ = ["main", "run_experiment"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The subcommands beside LightningCLI's: typed functions whose signatures become the options


def study(
    studies: list[str],
    seeds: int | list[int] | None = None,
    output_dir: str | None = None,
    experiment: str = "fashion-cnn-studies",
    combined_report: str | None = None,
    compare_with: str | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    reuse: bool = True,
    executor: Literal["serial", "ray"] = "serial",
    workers: int | None = None,
    run_cpus: int | None = None,
    run_gpus: float = 0.0,
    ray_address: str | None = None,
    max_retries: int = 2,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> int:
    """Run every variant x seed of one or more studies and judge their claims.

    Each variant and seed is an MLflow child run of the study's parent run; finished runs are
    skipped on a rerun and identical runs reused. A report (report.md, figures, results.json) is
    written per study.

    Args:
        studies: Study files (paths, or packaged names: studies/dropout); docs/studies.md.
        seeds: Seed count (5: seeds 0-4) or list ([0,1,7]); default: each study's own.
        output_dir: Report folder (default studies/<name>; with several studies, OUTPUT_DIR/<name>).
            Each run's checkpoints and log go under it.
        experiment: MLflow experiment of the parent and child runs.
        combined_report: Also write one Markdown document over all the studies to this file (and
            its results to the .json beside it).
        compare_with: Another combined report (.md or .json) to set this one's verdicts against:
            adds a table of the claims whose verdict differs (e.g. a short and a full budget).
        dry_run: Show the plan; run nothing.
        report_only: Write the reports from the runs already finished; run nothing.
        reuse: Copy a finished run with the same resolved config and seed instead of training.
        executor: serial (one run after another in this process) or ray (runs in parallel).
        workers: Runs at once on Ray (local Ray default: every core / run_cpus).
        run_cpus: CPUs (and torch threads) per run (serial default: all; ray default: 1).
        run_gpus: GPUs per run on Ray; 0.25 puts four runs on each GPU.
        ray_address: An existing Ray cluster (auto, host:port); default: start a local Ray.
        max_retries: How often Ray restarts a run whose worker or node died.
        model: Model settings for every run, e.g. --model.dropout 0.3.
        data: Data settings for every run, e.g. --data.batch_size 128.
        trainer: Trainer settings for every run, e.g. --trainer.max_epochs 1.
        checkpoint: Checkpoint settings for every run, e.g. --checkpoint.save_last false.
    """
    from fashion_cnn.errors import ConfigError, StudyError
    from fashion_cnn.experiment import ConfigResolver
    from fashion_cnn.study import ConsoleProgress, make_executor, override_args, run_overrides, run_studies
    from fashion_cnn.study.spec import parse_seeds

    groups = {"model": model, "data": data, "trainer": trainer, "checkpoint": checkpoint}
    overrides = override_args(run_overrides(groups))
    chosen = parse_seeds(seeds, "--seeds") if seeds is not None else None
    runner = make_executor(executor, workers, run_cpus, run_gpus, ray_address, max_retries)
    resolver = ConfigResolver()
    try:  # the per-run settings are checked now, by the CLI's own parser, not when a run starts
        resolver.resolve(None, overrides)
    except ConfigError as exc:
        raise StudyError(f"per-run settings {' '.join(overrides)}: {exc}") from None
    run_studies(
        studies,
        overrides=overrides,
        seeds=chosen,
        output=output_dir,
        experiment=experiment,
        dry_run=dry_run,
        report_only=report_only,
        reuse=reuse,
        combined_report=combined_report,
        compare_with=compare_with,
        command=_study_command(studies, locals()),
        executor=runner,
        progress=ConsoleProgress(sys.stderr),
        resolver=resolver,
    )
    return 0


def _study_command(studies: list[str], given: dict[str, Any]) -> str:
    """The study command line that trains these runs, canonical: files, then every option that is
    not its default (``--report_only`` and ``--dry_run`` left out: they train nothing)."""
    import inspect

    words = ["fashion-cnn", "study", *studies]
    for name, param in inspect.signature(study).parameters.items():
        value = given.get(name)
        if name in ("studies", "report_only", "dry_run") or value == param.default:
            continue
        if isinstance(value, dict):
            words += [w for key, v in value.items() for w in (f"--{name}.{key}", _word(v))]
        else:
            words += [f"--{name}", _word(value)]
    return shlex.join(words)


def _word(value: Any) -> str:
    import json

    from fashion_cnn.study.plan import plain

    return value if isinstance(value, str) else json.dumps(plain(value))


def export(ckpt_path: str, output_file: str = "model.onnx", opset: int = 18) -> int:
    """Export a checkpoint to ONNX: uint8 pixels (B, 1, 28, 28) in, logits and probs out.

    Args:
        ckpt_path: A checkpoint (.ckpt) written by fashion-cnn fit.
        output_file: The ONNX file to write (written only once onnxruntime reproduces PyTorch).
        opset: ONNX opset of the file.
    """
    from fashion_cnn.export import INPUT_NAME, export_onnx

    path = export_onnx(ckpt_path, output_file, opset)
    sys.stderr.write(f"exported {path}: input {INPUT_NAME} uint8 (B, 1, 28, 28), outputs logits, probs\n")
    return 0


def configs(copy: str | None = None, force: bool = False) -> int:
    """List the configs shipped with the package, or copy them out for editing.

    Args:
        copy: Copy every packaged config (and the studies/ and sweeps/ folders) into this folder.
        force: Overwrite files of the same name in the --copy folder.
    """
    from fashion_cnn.configs import copy_configs, packaged_configs

    if copy is not None:
        written = copy_configs(copy, force)
        sys.stderr.write(f"copied {len(written)} configs to {copy}\n")
        return 0
    found = packaged_configs()
    width = max(len(c.name) for c in found)
    for c in found:
        sys.stdout.write(f"{c.name:<{width}}  {c.description}\n")
    sys.stdout.write(
        "\nUse one with --config configs/<name>.yaml (or just <name>); copy them out with "
        "`fashion-cnn configs --copy DIR`.\n"
    )
    return 0


@dataclass(frozen=True)
class Tool:
    """A subcommand that is a function, not a Trainer method."""

    function: Callable[..., int]
    help: str
    positional: tuple[str, ...] = ()


def _tools() -> dict[str, Tool]:
    tools = {
        "study": Tool(study, "Run hypothesis studies: variants x seeds, with verdicts.", ("studies",)),
        "export": Tool(export, "Export a checkpoint to ONNX."),
        "configs": Tool(configs, "List or copy the packaged configs."),
    }
    try:
        from fashion_cnn.sweep.command import sweep
    except ImportError:  # pragma: no cover - the sweep package is part of the distribution
        return tools
    tools["sweep"] = Tool(sweep, "Search hyperparameters with Optuna (pruning, resumable, many workers).")
    return tools


# --------------------------------------------------------------------------------------------
# The parser


class ConsoleParser(ArgumentParser):
    """The console's parser: a bad argument is two lines on stderr and exit status 2.

    The top-level parser also registers the tool subcommands next to LightningCLI's.
    """

    def add_subcommands(self, *args: Any, **kwargs: Any) -> Any:
        action = super().add_subcommands(*args, **kwargs)
        for name, tool in _tools().items():
            action.add_subcommand(name, _tool_parser(name, tool), help=tool.help)
        return action

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        text = " ".join(message.split())
        # "required: export.ckpt_path" names the option as typed: "--ckpt_path" of "fashion-cnn export".
        missing = re.match(r"the following arguments are required: (\w+)\.(.+)", text)
        switch = re.match(r"argument (--\w+)/--no_\w+: invalid _boolean_type value: (.+)", text)
        if switch:
            option, value = switch.groups()
            text = f"{option} is a switch: give it alone or as {option} true|false, not {option} {value}"
        tools = _tools()
        if missing and missing.group(1) in {*TRAINER_SUBCOMMANDS, *tools}:
            sub, keys = missing.groups()
            positional = tools[sub].positional if sub in tools else ()
            names = [k.strip().removeprefix(sub + ".") for k in keys.split(",")]
            text = "missing " + ", ".join(n if n in positional else f"--{n}" for n in names)
            prog = f"fashion-cnn {sub}"
        sys.stderr.write(f"fashion-cnn: error: {text}\nSee `{prog} --help` for the options.\n")
        raise SystemExit(2)


class _ToolParser(JsonArgumentParser):
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        ConsoleParser.error(self, message, ex)  # type: ignore[arg-type]


def _tool_parser(name: str, tool: Tool) -> JsonArgumentParser:
    parser = _ToolParser(
        prog=f"fashion-cnn {name}", description=(tool.function.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("-c", "--config", action=ConfigFileAction, help="A YAML file of these options.")
    for positional in tool.positional:
        parser.add_argument(positional, nargs="+", type=str, help=_arg_help(tool.function, positional))
    # Switches work as flags and with a value: --dry_run, --dry_run true, --no_reuse, --reuse false.
    switches = [
        p for p in inspect.signature(tool.function).parameters.values() if p.annotation in (bool, "bool")
    ]
    for param in switches:
        parser.add_argument(
            f"--{param.name}",
            action=ActionYesNo(yes_prefix="", no_prefix="no_"),
            nargs="?",
            default=param.default,
            help=_arg_help(tool.function, param.name),
        )
    parser.add_function_arguments(tool.function, skip={*tool.positional, *(p.name for p in switches)})
    return parser


def _arg_help(function: Callable[..., Any], name: str) -> str:
    doc = function.__doc__ or ""
    marker = f"{name}: "
    start = doc.find(marker)
    return " ".join(doc[start + len(marker) :].split("\n")[0].split()) if start >= 0 else ""


def build_parser() -> JsonArgumentParser:
    """The whole ``fashion-cnn`` parser (LightningCLI's, with the tools added), without running."""
    return capture_parser(lambda: FashionCLI(args=[], parser_class=ConsoleParser))


# --------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fashion-cnn`` console script; returns the exit status.

    0 done; 2 a user error (one ``fashion-cnn: error: ...`` line); 130 interrupted by Ctrl+C and
    143 by SIGTERM (finished work kept, the command to continue printed).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = build_parser().parse_args(args)  # --help, --print_config, bad arguments: exit here
        name = config.subcommand
        if name not in TRAINER_SUBCOMMANDS:
            tool = _tools()[name]
            options = {k: v for k, v in config[name].items() if k not in ("config", "__path__")}
            return tool.function(**options)
        run_cli(args, parser_class=ConsoleParser)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Interrupted as exc:
        sys.stderr.write(f"fashion-cnn: {exc}\n")
        return 143 if exc.signal_name == "SIGTERM" else 130
    except KeyboardInterrupt:
        sys.stderr.write("fashion-cnn: interrupted\n")
        return 130
    except Exception as exc:
        message = describe(exc)
        if message is None:
            raise
        sys.stderr.write(f"fashion-cnn: error: {message}\n")
        return 2


def describe(exc: BaseException) -> str | None:
    """One line for a user error, or None for a bug (which keeps its traceback)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (UserError, ValueError, FileNotFoundError, PermissionError)):
        return " ".join(str(exc).split())
    if isinstance(exc, MlflowException):
        return (
            f"MLflow tracking failed: {exc.message.splitlines()[0]}. Start the tracking server or point "
            "MLFLOW_TRACKING_URI / --trainer.logger.init_args.tracking_uri at a reachable store (the "
            "default is sqlite:///mlflow.db in this folder)."
        )
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc):
        return (
            "the checkpoint's weights do not fit the model built from the config: "
            f"{str(exc).splitlines()[0]} Use the config the checkpoint was trained with."
        )
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
