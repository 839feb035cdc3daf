"""Who may import whom (the house rules of the package), and no pointer to a document the repository lacks."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SVI = REPO / "svi"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; `from x import y` gives x and x.y)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_the_method_core_is_pure_torch():
    """svi/erft and svi/flow.py import torch, the standard library and each other only."""
    for path in [*SVI.glob("erft/*.py"), SVI / "flow.py"]:
        for name in _imports(path):
            top = name.split(".")[0]
            ok = top in sys.stdlib_module_names or top == "torch" or name.startswith(("svi.flow", "svi.erft"))
            assert ok, f"{path.relative_to(REPO)} imports {name}"


def test_no_toy_code_outside_the_toy_package():
    for path in SVI.rglob("*.py"):
        if "toy" in path.relative_to(SVI).parts:
            continue
        assert not any(n.startswith("svi.toy") for n in _imports(path)), path.relative_to(REPO)
    core = [p for d in ("erft", "lit", "data", "backbones", "callbacks", "conditions", "sampling") for p in
            (SVI / d).glob("*.py")]
    for path in core:  # toy-only names stay in the toy package (docstrings may point to it)
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"PatchAutoencoder|toy_videos|ToyClips|make_scene|svi\.toy\.\w+ import", code), path


def test_no_reference_to_documents_outside_the_repository():
    pattern = re.compile(r"SPEC ?§|SPEC\.md|reference/[a-z_]+\.md|\.\./shared")
    roots = [SVI, REPO / "conf", REPO / "docs", REPO / "experiments", REPO / "notebooks", REPO / "README.md"]
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()
             and p.suffix in (".py", ".yaml", ".md", ".sh", ".ipynb")]
    cited = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in files for m in pattern.finditer(p.read_text())]
    assert not cited, cited
