"""The architecture's rules (docs/architecture.md), checked on the source so they cannot rot.

- One concern per module: none over 600 lines.
- Library modules never import the CLI module, and never print or exit: only ``cli.py`` talks to
  the console (study/command.py, sweep/command.py and the CLI's own tools write their result lines
  to stderr).
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
CONSOLE = {
    "cli.py",
    "study/command.py",
    "sweep/command.py",
}  # the command layer: may write to stderr and exit


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


def test_the_system_does_not_repeat_the_networks_signature() -> None:
    """Each option is defined once: the training system takes its network as an argument, so it
    shares no parameter with the network's signature but num_classes (which the data links into
    both); the sweep's and the executors' options are dataclasses, read by the commands."""

    from fashion_cnn.network import FashionCNNNet
    from fashion_cnn.system import FashionCNN

    shared = set(inspect.signature(FashionCNN.__init__).parameters) & set(
        inspect.signature(FashionCNNNet.__init__).parameters
    )
    assert shared == {"self", "num_classes"}
