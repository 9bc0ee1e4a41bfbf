"""Imports point down the layers (docs/architecture.md): core <- stages <- orchestration <- interfaces.

Every import in src/specialize counts, those inside functions and under TYPE_CHECKING included.
"""

from __future__ import annotations

import ast
import pathlib

import specialize

SOURCE = pathlib.Path(specialize.__file__).parent
CORE = {"config", "errors", "runs"}
STAGES = {"data", "models", "search", "train", "evaluate", "deploy", "monitor"}
INTERFACES = {"cli", "serve", "ui"}
ORCHESTRATION = {"pipeline", "retraining", "tuning", "model_card"}
FORBIDDEN = {
    **{core: STAGES | INTERFACES | ORCHESTRATION for core in CORE},
    **{stage: INTERFACES | ORCHESTRATION for stage in STAGES},
    "data": INTERFACES | ORCHESTRATION | {"train", "evaluate"},  # the first stage knows none after it
    **{module: INTERFACES for module in ORCHESTRATION},
}


def imported(tree: ast.AST) -> set[str]:
    """The part of specialize each import names: `specialize.data.load` and `from specialize import data` give data."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n.split(".")[1] for n in names if n.startswith("specialize.")}


def test_no_import_crosses_a_layer_the_wrong_way() -> None:
    crossings = set()
    files = sorted(SOURCE.rglob("*.py"))
    for path in files:
        module = path.relative_to(SOURCE)
        layer = module.parts[0].removesuffix(".py")
        for target in imported(ast.parse(path.read_text(encoding="utf-8"))) & FORBIDDEN.get(layer, set()):
            crossings.add((module.as_posix(), target))
    assert len(files) > 40 and imported(ast.parse("from specialize import serve")) == {"serve"}
    assert not crossings, f"imports against the layers (module, what it imports): {sorted(crossings)}"
