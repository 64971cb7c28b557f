"""Dependency direction: the wrc library never imports Hydra, evaluation/ or utils/."""

from __future__ import annotations

import ast

from tests.conftest import REPO_ROOT

FORBIDDEN_IN_LIBRARY = ("hydra", "omegaconf", "evaluation", "utils", "train_wrc", "hydra_plugins")


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_wrc_is_free_of_hydra_and_tooling():
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(_imports(path) & set(FORBIDDEN_IN_LIBRARY))
        for path in (REPO_ROOT / "wrc").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_hydra_plugins_stay_cheap():
    for path in (REPO_ROOT / "hydra_plugins").glob("*.py"):
        assert "torch" not in _imports(path), path
    assert not (REPO_ROOT / "hydra_plugins" / "__init__.py").exists()  # a namespace package, as Hydra requires


def test_every_registered_upsampler_has_a_config():
    from wrc import list_upsamplers

    configs = {p.stem for p in (REPO_ROOT / "config" / "model").glob("*.yaml")}
    assert set(list_upsamplers()) <= configs
