"""The architecture's rules (docs/architecture.md), checked on the source so they cannot rot.

- One concern per module: none over 600 lines.
- Library modules never import the CLI module, and never print or exit: only ``cli.py`` talks to
  the console (sweep/command.py and the CLI's own tools write their result lines to stderr).
- Public extension points only: no attribute starting with ``_`` is read from another object
  (``self._x`` and our own private modules are fine).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fashion_cnn"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
CONSOLE = {"cli.py", "sweep/command.py"}  # the command layer: may write to stderr and exit


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_is_over_600_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600


@pytest.mark.parametrize("path", [p for p in MODULES if _name(p) not in CONSOLE], ids=_name)
def test_library_modules_never_import_the_cli_print_or_exit(path: Path) -> None:
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            assert node.module != "fashion_cnn.cli", f"line {node.lineno} imports the CLI"
            assert not (node.module == "fashion_cnn" and any(a.name == "cli" for a in node.names))
        if isinstance(node, ast.Import):
            assert all(a.name != "fashion_cnn.cli" for a in node.names), f"line {node.lineno}"
        if isinstance(node, ast.Call):
            func = node.func
            assert not (isinstance(func, ast.Name) and func.id in {"print", "exit"}), f"line {node.lineno}"
            is_sys_exit = (
                isinstance(func, ast.Attribute)
                and func.attr == "exit"
                and isinstance(func.value, ast.Name)
                and func.value.id == "sys"
            )
            assert not is_sys_exit, f"line {node.lineno} calls sys.exit"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_private_attribute_of_another_object_is_used(path: Path) -> None:
    own = {"self", "cls"}
    for node in ast.walk(_tree(path)):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue  # dunders (__name__, __doc__) are public
        base = node.value
        assert isinstance(base, ast.Name) and base.id in own, (
            f"line {node.lineno}: .{node.attr} of {ast.unparse(base)} is private to it"
        )


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The private-attribute check finds what it is meant to find."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(trainer):\n    return trainer._checkpoint_connector\n")
    with pytest.raises(AssertionError, match="_checkpoint_connector"):
        test_no_private_attribute_of_another_object_is_used(bad)


def _defaults(function) -> dict[str, object]:
    import inspect

    params = inspect.signature(function).parameters
    return {k: p.default for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def _same_defaults(copy, source, skip: tuple[str, ...] = ()) -> list[str]:
    """The parameters of ``source`` that ``copy`` lacks or gives another default."""
    mine, theirs = _defaults(copy), _defaults(source)
    return [
        f"{k}: {mine.get(k, 'missing')!r} != {v!r}"
        for k, v in theirs.items()
        if k not in skip and mine.get(k, v) != v
    ] + [f"{k}: missing" for k in theirs if k not in skip and k not in mine]


def test_repeated_signatures_keep_their_defaults() -> None:
    """Two signatures are repeated on purpose, because LightningCLI and jsonargparse build options
    from flat typed signatures: the LightningModule's network arguments (FashionCNNNet's) and the
    ``sweep`` command's options (build_spec's). Their defaults must not drift apart."""
    from fashion_cnn.network import FashionCNNNet
    from fashion_cnn.sweep.command import sweep
    from fashion_cnn.sweep.spec import build_spec
    from fashion_cnn.system import FashionCNN

    # Since issue 20 the training system takes the network as an argument: it no longer repeats
    # the network's signature (only num_classes, which the data links into both).
    shared = set(inspect.signature(FashionCNN.__init__).parameters) & set(
        inspect.signature(FashionCNNNet.__init__).parameters
    )
    assert shared == {"self", "num_classes"}
    # build_spec's enqueue is a tuple (the command's None means none); settings and resolver are
    # built by the command from its --model/--data/... groups.
    assert _same_defaults(sweep, build_spec, skip=("enqueue", "settings", "resolver")) == []


def test_the_signature_check_can_fail() -> None:
    def source(a: int = 1, b: str = "x") -> None: ...

    def drifted(a: int = 2) -> None: ...

    assert _same_defaults(drifted, source) == ["a: 2 != 1", "b: missing"]
