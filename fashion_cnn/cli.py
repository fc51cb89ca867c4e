"""The ``fashion-cnn`` command: one parser per subcommand, built when asked, and user errors as one line.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (:class:`FashionCLI`); ``study``,
``export``, ``sweep``, ``configs`` and ``ui`` are typed functions, registered as subcommands of the
same top-level parser. Every one takes ``--config`` and ``--print_config`` with snake_case options.
This is the only module that prints or exits; the library it calls logs and raises.

Start-up: only the parser of the subcommand given is built, and torch, Lightning and MLflow are
imported only by the subcommands that use them, so ``fashion-cnn --help`` and ``fashion-cnn
configs`` answer in well under a second (``benchmarks/bench_startup.py``). The other subcommands
appear in the listing as empty parsers that carry their one-line help.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, NoReturn

from jsonargparse import ActionYesNo
from jsonargparse import ArgumentParser as JsonArgumentParser

from fashion_cnn import __version__
from fashion_cnn.configs import ConfigFileAction
from fashion_cnn.errors import Interrupted, UserError, sigterm_raises

__all__ = ["main", "run_experiment"]  # noqa: F822 - run_experiment: see __getattr__

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Configurable CNN experiments on Fashion-MNIST with PyTorch Lightning and MLflow: train and "
    "evaluate one config, run studies and sweeps, export a model, and look at the runs."
)
# The LightningCLI subcommands (fashion_cnn.lightning_cli.TRAINER_SUBCOMMANDS) and their one-line help.
TRAINER_HELP = {
    "fit": "Train a config, then test its best checkpoint; runs and metrics go to MLflow.",
    "validate": "Evaluate a checkpoint on the validation set.",
    "test": "Evaluate a checkpoint on the test set.",
    "predict": "Write a checkpoint's predictions for the test set to a CSV file.",
}
VERBOSE = "--verbose"  # console option of the trainer subcommands; not part of the run's config


def __getattr__(name: str) -> Any:
    if name == "run_experiment":  # re-exported without importing Lightning with the console
        from fashion_cnn.runs.launch import run_experiment

        return run_experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# No `if TYPE_CHECKING:` imports in this module: jsonargparse executes them to resolve the tools'
# annotations, which would import Lightning for `fashion-cnn configs`.

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


def ui(
    tracking_uri: str | None = None,
    run: str | None = None,
    experiment_id: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
) -> int:
    """Open MLflow's UI on the runs of fit, study and sweep, and print the URLs that show them.

    The store is the one fit, study and sweep use: --tracking_uri, else MLFLOW_TRACKING_URI, else
    ./mlflow.db. The URLs open the Model training view (MLflow 3 opens its GenAI view otherwise),
    where a study's or sweep's parent run lists its child runs nested under it. Stop with Ctrl+C.

    Args:
        tracking_uri: The MLflow store (sqlite:///path.db, postgresql://..., or a server's http://...).
        run: Print the URL of this run (a run id; a parent run shows its children).
        experiment_id: Print the URL of this experiment only.
        host: The interface the UI listens on; 0.0.0.0 shares it with the network.
        port: The UI's port.
    """
    from mlflow.tracking import MlflowClient

    from fashion_cnn.tracking_uri import is_server
    from fashion_cnn.ui import base_url, experiment_url, local_store, run_url, start_server, stop_server

    uri = local_store(tracking_uri)
    base = uri.rstrip("/") if is_server(uri) else base_url(host, port)
    client = MlflowClient(uri)
    if run is not None:
        try:
            found = client.get_run(run)
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own error for an unknown id
            raise UserError(f"--run {run}: no such run in {uri} ({type(exc).__name__})") from None
        urls = [("run " + (found.info.run_name or run), run_url(base, found.info.experiment_id, run))]
    else:
        experiments = client.search_experiments()
        chosen = [e for e in experiments if experiment_id in (None, e.experiment_id)]
        if experiment_id is not None and not chosen:
            raise UserError(f"--experiment_id {experiment_id}: no such experiment in {uri}")
        if experiment_id is None:  # MLflow's empty "Default" experiment is left out
            chosen = [
                e
                for e in chosen
                if e.name != "Default" or client.search_runs([e.experiment_id], max_results=1)
            ]
        urls = [(f"experiment {e.name}", experiment_url(base, e.experiment_id)) for e in chosen]
    if is_server(uri):
        for what, url in urls:
            sys.stdout.write(f"{what}: {url}\n")
        return 0
    try:
        with sigterm_raises():  # SIGTERM, as Ctrl+C, stops the server too instead of orphaning it
            server = start_server(uri, host, port)
    except (KeyboardInterrupt, Interrupted):
        sys.stderr.write("fashion-cnn ui: stopped\n")
        return 0
    try:
        with sigterm_raises():
            sys.stderr.write(f"MLflow UI on {uri} at {base} (Ctrl+C stops it)\n")
            for what, url in urls or [("runs", base)]:
                sys.stdout.write(f"{what}: {url}\n")
            sys.stdout.flush()
            server.wait()
    except (KeyboardInterrupt, Interrupted):
        sys.stderr.write("fashion-cnn ui: stopped\n")
    finally:
        stop_server(server)
    return 0


@dataclass(frozen=True)
class Tool:
    """A subcommand that is a function, not a Trainer method: ``module:function``, imported when used."""

    target: str
    help: str
    positional: tuple[str, ...] = ()

    @property
    def function(self) -> Callable[..., int]:
        module, name = self.target.split(":")
        function: Callable[..., int] = getattr(import_module(module), name)
        return function


TOOLS = {
    "study": Tool(
        "fashion_cnn.study.command:study",
        "Run hypothesis studies: variants x seeds, with verdicts.",
        ("studies",),
    ),
    "sweep": Tool(
        "fashion_cnn.sweep.command:sweep",
        "Search hyperparameters with Optuna (pruning, resumable, on any executor).",
    ),
    "export": Tool("fashion_cnn.cli:export", "Export a checkpoint to ONNX."),
    "configs": Tool("fashion_cnn.cli:configs", "List or copy the packaged configs."),
    "ui": Tool("fashion_cnn.cli:ui", "Open MLflow's UI on the runs of fit, study and sweep."),
}


# --------------------------------------------------------------------------------------------
# The parser


def console_error(parser: Any, message: str, ex: Exception | None = None) -> NoReturn:
    """A bad argument as two lines on stderr (the problem, then where the options are) and exit 2."""
    parser = getattr(ex, "subcommand_parser", None) or parser
    prog = parser.prog.replace(" [options]", "")
    text = " ".join(message.split())
    # "required: export.ckpt_path" names the option as typed: "--ckpt_path" of "fashion-cnn export".
    missing = re.match(r"the following arguments are required: (\w+)\.(.+)", text)
    switch = re.match(r"argument (--\w+)/--no_\w+: invalid _boolean_type value: (.+)", text)
    if switch:
        option, value = switch.groups()
        text = f"{option} is a switch: give it alone or as {option} true|false, not {option} {value}"
    if missing and missing.group(1) in {*TRAINER_HELP, *TOOLS}:
        sub, keys = missing.groups()
        positional = TOOLS[sub].positional if sub in TOOLS else ()
        names = [k.strip().removeprefix(sub + ".") for k in keys.split(",")]
        text = "missing " + ", ".join(n if n in positional else f"--{n}" for n in names)
        prog = f"fashion-cnn {sub}"
    sys.stderr.write(f"fashion-cnn: error: {text}\nSee `{prog} --help` for the options.\n")
    raise SystemExit(2)


def console_parser_class(with_tools: bool = False) -> type[Any]:
    """The console's LightningCLI parser class (imports Lightning): errors as :func:`console_error`.

    Args:
        with_tools: Also register the tool subcommands next to LightningCLI's (the whole parser,
            as :func:`build_parser` shows it); the console itself dispatches them before.
    """
    from fashion_cnn.lightning_cli import ArgumentParser

    class ConsoleParser(ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault(
                "epilog",
                f"{VERBOSE}: show every message and warning of the libraries on the console (fit, "
                "validate, test, predict).",
            )
            super().__init__(*args, **kwargs)

        def add_subcommands(self, *args: Any, **kwargs: Any) -> Any:
            action = super().add_subcommands(*args, **kwargs)
            for name, tool in TOOLS.items() if with_tools else ():
                action.add_subcommand(name, _tool_parser(name, tool), help=tool.help)
            return action

        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            console_error(self, message, ex)

    return ConsoleParser


class _ToolParser(JsonArgumentParser):
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        console_error(self, message, ex)


def _tool_parser(name: str, tool: Tool) -> JsonArgumentParser:
    function = tool.function
    parser = _ToolParser(prog=f"fashion-cnn {name}", description=(function.__doc__ or "").split("\n\n")[0])
    parser.add_argument("-c", "--config", action=ConfigFileAction, help="A YAML file of these options.")
    for positional in tool.positional:
        parser.add_argument(positional, nargs="+", type=str, help=_arg_help(function, positional))
    # Switches work as flags and with a value: --dry_run, --dry_run true, --no_reuse, --reuse false.
    switches = [p for p in inspect.signature(function).parameters.values() if p.annotation in (bool, "bool")]
    for param in switches:
        parser.add_argument(
            f"--{param.name}",
            action=ActionYesNo(yes_prefix="", no_prefix="no_"),
            nargs="?",
            default=param.default,
            help=_arg_help(function, param.name),
        )
    groups = _option_groups(function)
    for group in groups.values():
        parser.add_class_arguments(group, nested_key=None, as_group=False)
    parser.add_function_arguments(function, skip={*tool.positional, *(p.name for p in switches), *groups})
    return parser


def _option_groups(function: Callable[..., Any]) -> dict[str, type]:
    """The parameters of ``function`` that are dataclasses of options: their fields become the
    command's own top-level options (``--executor``, not ``--run.executor``)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(function)
    return {k: v for k, v in hints.items() if isinstance(v, type) and dataclasses.is_dataclass(v)}


def _call(tool: Tool, options: dict[str, Any]) -> int:
    """Call ``tool`` with the parsed ``options``, its option groups gathered into their dataclasses."""
    import dataclasses

    function = tool.function
    for name, group in _option_groups(function).items():
        fields = {f.name for f in dataclasses.fields(group)}
        options[name] = group(**{k: options.pop(k) for k in list(options) if k in fields})
    return function(**options)


def _arg_help(function: Callable[..., Any], name: str) -> str:
    doc = function.__doc__ or ""
    marker = f"{name}: "
    start = doc.find(marker)
    return " ".join(doc[start + len(marker) :].split("\n")[0].split()) if start >= 0 else ""


def build_parser() -> JsonArgumentParser:
    """The whole ``fashion-cnn`` parser (LightningCLI's, with the tools added), without running.

    Slow (every subcommand's parser, Lightning imported): for docs and tests; :func:`main` builds
    only the parser of the subcommand given.
    """
    from jsonargparse import capture_parser

    from fashion_cnn.lightning_cli import FashionCLI

    return capture_parser(lambda: FashionCLI(args=[], parser_class=console_parser_class(with_tools=True)))


def _light_parser(chosen: str | None) -> JsonArgumentParser:
    """The top-level parser with only ``chosen``'s real parser; the other subcommands are empty
    parsers that carry their help, for the listing of ``fashion-cnn --help`` and for a typo."""
    parser = _ToolParser(prog="fashion-cnn", description=DESCRIPTION, version=__version__)
    subcommands = parser.add_subcommands()
    for name, help_text in {**TRAINER_HELP, **{n: t.help for n, t in TOOLS.items()}}.items():
        if name == chosen and name in TOOLS:
            sub = _tool_parser(name, TOOLS[name])
        else:
            sub = _ToolParser(prog=f"fashion-cnn {name}", description=help_text)
        subcommands.add_subcommand(name, sub, help=help_text)
    return parser


def _subcommand_of(args: Sequence[str]) -> tuple[str | None, bool]:
    """The subcommand named in ``args`` (None: none, or an unknown word), and whether a top-level
    ``--config`` or ``--print_config`` comes before it (which needs the whole parser)."""
    top_level = False
    for arg in args:
        if arg in ("-c", "--config") or arg.startswith(("--config=", "--print_config")):
            top_level = True
        elif not arg.startswith("-"):
            return (arg if arg in {*TRAINER_HELP, *TOOLS} else None), top_level
    return None, top_level


# --------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fashion-cnn`` console script; returns the exit status.

    0 done; 2 a user error (one ``fashion-cnn: error: ...`` line); 130 interrupted by Ctrl+C and
    143 by SIGTERM (finished work kept, the command to continue printed).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    name, top_level = _subcommand_of(args)
    try:
        if name in TRAINER_HELP and not top_level:
            return _run_trainer(args)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        # --help, --print_config, bad arguments: exit here
        parser = build_parser() if top_level else _light_parser(name)
        config = parser.parse_args(args)
        name = config.subcommand
        if name in TRAINER_HELP:
            return _run_trainer(args)
        options = {k: v for k, v in config[name].items() if k not in ("config", "__path__")}
        return _call(TOOLS[name], options)
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


def _run_trainer(args: list[str]) -> int:
    """fit, validate, test or predict through LightningCLI, inside the console's scope."""
    from fashion_cnn.lightning_cli import run_cli
    from fashion_cnn.quiet import console_scope

    # --verbose is the console's, not the run's: kept out of the parsed config (and so out of the
    # config logged to MLflow and of a study's config hashes).
    verbose = VERBOSE in args
    with console_scope(verbose=verbose):
        run_cli([a for a in args if a != VERBOSE], parser_class=console_parser_class())
    return 0


def describe(exc: BaseException) -> str | None:
    """One line for a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, (UserError, ValueError, FileNotFoundError, PermissionError)):
        return " ".join(str(exc).split())
    if "mlflow" not in sys.modules:  # then no MLflow error can be on its way (importing it costs 1-2 s)
        return _describe_torch(exc)
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return (
            f"MLflow tracking failed: {exc.message.splitlines()[0]}. Start the tracking server or point "
            "MLFLOW_TRACKING_URI / --trainer.logger.init_args.tracking_uri at a reachable store (the "
            "default is sqlite:///mlflow.db in this folder)."
        )
    return _describe_torch(exc)


def _describe_torch(exc: BaseException) -> str | None:
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc):
        return (
            "the checkpoint's weights do not fit the model built from the config: "
            f"{str(exc).splitlines()[0]} Use the config the checkpoint was trained with."
        )
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
