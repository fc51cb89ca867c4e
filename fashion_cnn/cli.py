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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from jsonargparse import ActionYesNo, capture_parser
from jsonargparse import ArgumentParser as JsonArgumentParser

from fashion_cnn.configs import ConfigFileAction
from fashion_cnn.errors import Interrupted, UserError
from fashion_cnn.experiment import TRAINER_SUBCOMMANDS, ArgumentParser, FashionCLI, run_cli
from fashion_cnn.runs.launch import run_experiment

__all__ = ["main", "run_experiment"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The subcommands beside LightningCLI's: typed functions whose signatures become the options


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
    from fashion_cnn.study.command import study
    from fashion_cnn.sweep.command import sweep

    return {
        "study": Tool(study, "Run hypothesis studies: variants x seeds, with verdicts.", ("studies",)),
        "export": Tool(export, "Export a checkpoint to ONNX."),
        "configs": Tool(configs, "List or copy the packaged configs."),
        "sweep": Tool(sweep, "Search hyperparameters with Optuna (pruning, resumable, on any executor)."),
    }


def _option_groups(function: Callable[..., Any]) -> dict[str, type]:
    """The parameters of ``function`` that are dataclasses of options: their fields become the
    command's own top-level options (``--executor``, not ``--run.executor``)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(function)
    return {
        name: hint
        for name, hint in hints.items()
        if isinstance(hint, type) and dataclasses.is_dataclass(hint)
    }


def _call(tool: Tool, options: dict[str, Any]) -> int:
    """Call ``tool`` with the parsed ``options``, its option groups gathered into their dataclasses."""
    import dataclasses

    for name, group in _option_groups(tool.function).items():
        fields = {f.name for f in dataclasses.fields(group)}
        options[name] = group(**{k: options.pop(k) for k in list(options) if k in fields})
    return tool.function(**options)


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
    groups = _option_groups(tool.function)
    for group in groups.values():
        parser.add_class_arguments(group, nested_key=None, as_group=False)
    parser.add_function_arguments(
        tool.function, skip={*tool.positional, *(p.name for p in switches), *groups}
    )
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
            return _call(tool, options)
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
