"""Dependency directions as a tested rule: benchmarks -> evaluation -> wrc -> torch_wrc, with utils below them all
(it imports none of the project), Hydra only at the entry points, and one-way arrows inside wrc."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PROJECT = ("wrc", "torch_wrc", "evaluation", "benchmarks", "utils", "hydra_plugins", "train_wrc", "tests")
MAY_IMPORT = {  # top-level package -> the project packages its modules may import
    "torch_wrc": set(),
    "utils": set(),
    "hydra_plugins": set(),
    "wrc": {"torch_wrc", "utils"},
    "evaluation": {"wrc", "torch_wrc", "utils", "hydra_plugins"},
    "benchmarks": {"evaluation", "wrc", "torch_wrc", "utils"},
}
HYDRA = {"hydra", "omegaconf"}
HYDRA_ALLOWED = {"train_wrc.py", "evaluation/__main__.py", "hydra_plugins/wrc_resolvers.py",
                 "evaluation/detection/train.py"}  # its Hydra imports are inside main(): the module imports without it
INSIDE_WRC = {  # wrc subpackage -> wrc subpackages it must not import
    "layers": {"upsamplers", "objectives", "training", "build"},
    "ops": {"upsamplers", "objectives", "layers", "training", "build"},
    "losses": {"upsamplers", "objectives", "training", "build"},
    "upsamplers": {"objectives", "training", "build"},
    "data": {"upsamplers", "objectives", "training", "build"},
}


def imports(path: Path) -> set[str]:
    """Dotted names of every absolute import in ``path`` (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_run_one_way(package):
    offenders = {}
    for path in sources(package):
        top = {name.split(".")[0] for name in imports(path)} & set(PROJECT)
        wrong = top - MAY_IMPORT[package] - {package}
        if wrong:
            offenders[str(path.relative_to(REPO_ROOT))] = sorted(wrong)
    assert not offenders, f"imports against the direction benchmarks -> evaluation -> wrc -> torch_wrc: {offenders}"


def test_hydra_lives_only_at_the_entry_points():
    offenders = [str(p.relative_to(REPO_ROOT)) for package in ("wrc", "evaluation", "benchmarks", "utils", "torch_wrc")
                 for p in sources(package) if {n.split(".")[0] for n in imports(p)} & HYDRA]
    assert set(offenders) <= HYDRA_ALLOWED, offenders


@pytest.mark.parametrize("part", sorted(INSIDE_WRC))
def test_arrows_inside_wrc(part):
    paths = sources(f"wrc/{part}") if (REPO_ROOT / "wrc" / part).is_dir() else [REPO_ROOT / "wrc" / f"{part}.py"]
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(n for n in imports(p) if n.split(".")[:2][-1] in INSIDE_WRC[part]
                                                        and n.startswith("wrc."))
                 for p in paths}
    assert not {k: v for k, v in offenders.items() if v}


def test_objectives_do_not_import_each_other():
    objectives = {p.stem for p in (REPO_ROOT / "wrc" / "objectives").glob("*.py")} - {"__init__", "base"}
    offenders = {p.stem: sorted(n for n in imports(p) if n.startswith("wrc.objectives.") and
                                n.split(".")[2] in objectives - {p.stem})
                 for p in (REPO_ROOT / "wrc" / "objectives").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_provenance_is_asked_in_one_place():
    """Commits, the command line and the device name come from wrc.provenance, nowhere else."""
    offenders = [str(p.relative_to(REPO_ROOT)) for package in ("wrc", "evaluation", "benchmarks")
                 for p in sources(package) if p.name != "provenance.py" and '"rev-parse"' in p.read_text()]
    assert not offenders


def test_hydra_plugins_stay_cheap():
    for path in sources("hydra_plugins"):
        assert "torch" not in {n.split(".")[0] for n in imports(path)}, path
    assert not (REPO_ROOT / "hydra_plugins" / "__init__.py").exists()  # a namespace package, as Hydra requires


def test_every_registered_upsampler_has_a_config():
    from wrc import list_upsamplers

    configs = {p.stem for p in (REPO_ROOT / "config" / "model").glob("*.yaml")}
    assert set(list_upsamplers()) <= configs


def test_tests_mirror_the_package():
    for package in ("wrc", "evaluation", "torch_wrc", "benchmarks", "utils"):
        assert (REPO_ROOT / "tests" / package).is_dir(), package
    stray = [p.name for p in (REPO_ROOT / "tests").glob("test_*.py")]
    repository_level = {"test_layout.py", "test_configs.py", "test_quickstart.py", "test_hubconf.py",
                        "test_packaging.py"}
    assert set(stray) <= repository_level, stray
