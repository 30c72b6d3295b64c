"""The packages stand in layers and every import points down (parsed with ``ast``, imports inside
functions included):

1. the foundation, ``lmvit/`` modules that know nothing above them: errors, io, distributed,
   settings (how a class checks its settings), runs (reading run directories) and hardware (what
   the CPU is and can do, from /proc/cpuinfo);
2. ``datamodules/`` and ``lightning_modules/``: import the foundation only, never the glue;
3. the entry points' glue, the rest of ``lmvit/`` (config, cli, resume, resolvers, Hydra
   callbacks): imports the foundation, and reaches a data module or a LightningModule only through
   the config's ``_target_``, never by an import;
4. the entry points (train.py, eval.py, generate.py, analysis/, bench/): anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

FOUNDATION = ("lmvit.errors", "lmvit.io", "lmvit.distributed", "lmvit.settings", "lmvit.runs", "lmvit.hardware")
MIDDLE = ("datamodules", "lightning_modules")
ABOVE_LMVIT = (*MIDDLE, "analysis", "bench", "train", "eval", "generate", "notebooks", "tests")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # from lmvit import runs
    return found


def module_name(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def within(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def glue(name: str) -> bool:
    """A module of lmvit/ above the foundation (the bare package, empty, is neither)."""
    return within(name, ("lmvit",)) and name != "lmvit" and not within(name, FOUNDATION)


def upward(path: Path, root: Path = ROOT) -> list[str]:
    """The imports of ``path`` that point up a layer."""
    name = module_name(path, root)
    found = imports(path)
    if within(name, FOUNDATION):
        bad = [m for m in found if glue(m) or within(m, ABOVE_LMVIT)]
    elif within(name, ("lmvit",)):
        bad = [m for m in found if within(m, ABOVE_LMVIT)]
    else:  # datamodules/, lightning_modules/
        bad = [m for m in found if glue(m)]
        bad += [m for m in found if within(m, ("analysis", "bench", "train", "eval", "generate", "tests"))]
        if within(name, ("datamodules",)):
            bad += [m for m in found if within(m, ("lightning_modules",))]
    return sorted(bad)


@pytest.mark.parametrize("path", modules("lmvit", *MIDDLE), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_points_up(path):
    assert upward(path) == [], f"{path.relative_to(ROOT)} imports from a layer above it"


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser finds an import hidden in a function, and the rule refuses it."""
    (tmp_path / "lmvit").mkdir()
    bad = tmp_path / "lmvit" / "io.py"
    bad.write_text("def f():\n    from lightning_modules.optim import SETTINGS\n    import lmvit.config\n")
    assert upward(bad, tmp_path) == ["lightning_modules.optim", "lightning_modules.optim.SETTINGS", "lmvit.config"]
