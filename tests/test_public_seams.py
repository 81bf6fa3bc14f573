"""No code outside components/train/ reaches into the trainer's private names: experiments, benchmarks,
checks, tests and the other packages use its public, documented functions (fitting.py, cached.py, ...),
so a refactor inside the trainer that keeps those names breaks nothing silently."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "components.train"
SCANNED = (
    "components",
    "serving",
    "monitoring",
    "pipelines",
    "benchmarks",
    "checks",
    "experiments",
    "tests",
    "examples",
)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(source: str) -> list[str]:
    """Each use of a `_`-prefixed name of components.train in `source`: imported, read as an attribute of one
    of its modules, or set on one with setattr (monkeypatching)."""
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to components.train or anything imported from it
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    modules.add(alias.asname or alias.name.split(".")[0])
                    found += [f"import {alias.name}" for part in alias.name.split(".") if _private(part)]
        elif isinstance(node, ast.ImportFrom) and node.module and (node.module + ".").startswith(PACKAGE + "."):
            for alias in node.names:
                if _private(alias.name) or any(_private(part) for part in node.module.split(".")):
                    found.append(f"from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            target, attribute = node.args[0], node.args[1]
            if (
                name == "setattr"
                and isinstance(target, ast.Name)
                and target.id in modules
                and isinstance(attribute, ast.Constant)
                and isinstance(attribute.value, str)
                and _private(attribute.value)
            ):
                found.append(f"setattr {target.id}.{attribute.value} (line {node.lineno})")
    return found


def test_no_module_outside_the_trainer_uses_its_private_names():
    offenders = {}
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative.parts[:2] == ("components", "train") or "node_modules" in relative.parts:
                continue
            reaches = private_reaches(path.read_text())
            if reaches:
                offenders[str(relative)] = reaches
    assert not offenders, offenders


def test_each_kind_of_reach_in_is_found():
    source = """
from components.train.executor import _compile
from components.train import executor, models
import components.train.input as train_input
executor._callbacks(1)
train_input._geometry(3)
monkeypatch.setattr(models, "_layers", None)
models.graph_layers()._replace(views=None)  # a NamedTuple's own method, on a value: allowed
"""
    assert sorted(private_reaches(source)) == [
        "executor._callbacks (line 5)",
        "from components.train.executor import _compile",
        "setattr models._layers (line 7)",
        "train_input._geometry (line 6)",
    ]
