"""The registries: a taken name is refused, modules are discovered (a new method is one file + one YAML),
and imports inside wrc run one way (layers/ops/losses <- upsamplers <- objectives)."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

import wrc.objectives
import wrc.upsamplers
from tests.conftest import tiny_train_config
from wrc.objectives import OBJECTIVES, Objective, create_objective, list_objectives, register_objective
from wrc.upsamplers import UPSAMPLERS, Upsampler, create_upsampler, list_upsamplers, register_upsampler

# ----------------------------------------------------------------------------------------------------------------
# One class per name
# ----------------------------------------------------------------------------------------------------------------


def test_a_second_upsampler_under_a_taken_name_is_refused():
    class Impostor(Upsampler):
        name = "lift"

    with pytest.raises(ValueError, match=r"upsampler name 'lift' is already registered by wrc\.upsamplers\.lift\.LiFT;"
                                         r" .*\.Impostor needs another name"):
        register_upsampler(Impostor)
    assert UPSAMPLERS.get("lift").__module__ == "wrc.upsamplers.lift"


def test_a_second_objective_under_a_taken_name_is_refused():
    class Impostor(Objective):
        name = "lift_multiscale"

    with pytest.raises(ValueError, match=r"objective name 'lift_multiscale' is already registered by "
                                         r"wrc\.objectives\.lift_multiscale\.LiftMultiscale; .*\.Impostor needs"):
        register_objective(Impostor)
    assert OBJECTIVES.get("lift_multiscale").__module__ == "wrc.objectives.lift_multiscale"


def test_registering_the_same_class_again_is_allowed():
    lift, objective = UPSAMPLERS.get("lift"), OBJECTIVES.get("lift_multiscale")
    assert register_upsampler(lift) is lift and register_objective(objective) is objective


def test_a_class_without_a_name_is_refused():
    class Nameless(Upsampler):
        pass

    with pytest.raises(ValueError, match="Nameless must set a class attribute `name`"):
        register_upsampler(Nameless)


def test_unknown_names_list_what_is_available():
    with pytest.raises(ValueError, match=r"unknown upsampler \(model\.name\) 'liftt'; available: .*lift"):
        create_upsampler("liftt", 8, 16)
    with pytest.raises(ValueError, match=r"unknown objective \(objective\.name\) 'lift'; available: .*lift_multiscale"):
        create_objective("lift")


def test_every_module_of_the_packages_is_discovered():
    """No import list: each module file of the packages is imported by the first lookup."""
    list_upsamplers(), list_objectives()
    for package in (wrc.upsamplers, wrc.objectives):
        for path in Path(package.__path__[0]).glob("[!_]*.py"):
            assert f"{package.__name__}.{path.stem}" in sys.modules, path


def test_submodules_are_attributes_of_their_package():
    assert wrc.upsamplers.lift.LiFT is UPSAMPLERS.get("lift")
    assert wrc.objectives.srt_distill.SRTDistill is OBJECTIVES.get("srt_distill")
    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        wrc.upsamplers.no_such_module  # noqa: B018


# ----------------------------------------------------------------------------------------------------------------
# Adding an upsampler is one file (+ one YAML); no file of the project is edited
# ----------------------------------------------------------------------------------------------------------------

TOY_UPSAMPLER = '''
"""A toy method: bilinear 2x times one learnable gain."""

import torch
from torch import nn

from wrc.upsamplers.base import Upsampler, register_upsampler, resize


@register_upsampler
class ToyScale2(Upsampler):
    name = "toy_scale2"
    scale = 2

    def __init__(self, in_channels: int, patch_size: int, *, init_gain: float = 1.0) -> None:
        super().__init__(in_channels, patch_size)
        self.gain = nn.Parameter(torch.tensor(float(init_gain)))

    def upsample_step(self, features, image):
        return self.gain * resize(features, (2 * features.shape[-2], 2 * features.shape[-1]))
'''

TOY_OBJECTIVE = '''
"""A toy objective: the upsampled features of the half-size image must match those of the image."""

import torch
import torch.nn.functional as F

from wrc.objectives.base import Objective, register_objective


@register_objective
class ToyMatch(Objective):
    name = "toy_match"

    def forward(self, backbone, upsampler, images):
        half = F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            low, target = backbone(half), backbone(images)
        loss = F.mse_loss(upsampler(low, half, output_size=target.shape[-2:]), target)
        return {"loss": loss, "loss_toy": loss.detach()}
'''


@pytest.fixture
def toy_plugins(tmp_path, monkeypatch):
    """A toy upsampler and objective, each a module in a folder outside the project, added to the packages'
    ``__path__``; unregistered and forgotten afterwards. Module names are unique per use, so no import cache
    of an earlier use can hide them."""
    modules = {}
    for package, source in ((wrc.upsamplers, TOY_UPSAMPLER), (wrc.objectives, TOY_OBJECTIVE)):
        folder = tmp_path / "plugins" / package.__name__.rsplit(".", 1)[-1]
        folder.mkdir(parents=True)
        stem = f"toy_{uuid.uuid4().hex[:8]}"
        (folder / f"{stem}.py").write_text(textwrap.dedent(source))
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        modules[package.__name__] = f"{package.__name__}.{stem}"
    yield modules
    UPSAMPLERS.unregister("toy_scale2")
    OBJECTIVES.unregister("toy_match")
    for name in modules.values():
        sys.modules.pop(name, None)
        package, stem = name.rsplit(".", 1)
        vars(sys.modules[package]).pop(stem, None)  # the attribute the import set on the package


def test_a_new_upsampler_and_objective_are_found_everywhere(toy_plugins, test_vit, tmp_path):
    from wrc import DenseFeatureExtractor, load_upsampler
    from wrc.build import build_objective, build_upsampler
    from wrc.checkpoint import save_checkpoint

    assert "toy_scale2" in list_upsamplers() and "toy_match" in list_objectives()
    up = create_upsampler("toy_scale2", 64, 16, init_gain=0.5)
    assert type(up).__module__ == toy_plugins["wrc.upsamplers"]
    assert build_upsampler({"name": "toy_scale2", "init_gain": 0.5}, test_vit).gain.item() == 0.5
    assert build_objective({"name": "toy_match"}).name == "toy_match"

    loaded = load_upsampler(save_checkpoint(tmp_path / "checkpoints" / "step_0000001", up, meta={}))
    assert type(loaded) is type(up) and loaded.gain.item() == 0.5 and loaded.init_kwargs == {"init_gain": 0.5}

    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        dense = DenseFeatureExtractor(test_vit, loaded)(image)
        torch.testing.assert_close(dense, 0.5 * create_upsampler("bilinear", 64, 16)(test_vit(image), image,
                                                                                    output_size=(8, 12)))


def test_a_new_upsampler_trains_with_a_new_objective(toy_plugins, tmp_path):
    from wrc import load_upsampler
    from wrc.training import train

    config = tiny_train_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 2})
    config["model"], config["objective"] = {"name": "toy_scale2"}, {"name": "toy_match"}
    result = train(config)
    assert result.step == 2
    assert load_upsampler(result.checkpoint).gain.item() != 1.0  # the one parameter was trained


def test_a_new_upsampler_composes_from_a_yaml_outside_the_project(toy_plugins, tmp_path):
    """``model=toy_scale2`` with the YAML in a folder on Hydra's search path (hydra.searchpath=[file://...])."""
    from tests.test_configs import compose_train

    configs = tmp_path / "configs"
    (configs / "model").mkdir(parents=True)
    (configs / "model" / "toy_scale2.yaml").write_text("name: toy_scale2\ninit_gain: 0.25\n")
    (configs / "objective").mkdir()
    (configs / "objective" / "toy_match.yaml").write_text("name: toy_match\n")
    cfg = compose_train("model=toy_scale2", "objective=toy_match", f"hydra.searchpath=[file://{configs}]")
    assert cfg["model"] == {"name": "toy_scale2", "init_gain": 0.25}
    up = create_upsampler(cfg["model"].pop("name"), 64, 16, **cfg["model"])
    assert up.gain.item() == 0.25
    assert create_objective(**cfg["objective"]).name == "toy_match"


def test_reimporting_a_module_re_registers_its_classes(toy_plugins):
    """Same module and qualname: the registry takes the re-created class (importlib.reload, notebooks)."""
    list_upsamplers()
    module = importlib.reload(sys.modules[toy_plugins["wrc.upsamplers"]])
    assert UPSAMPLERS.get("toy_scale2") is module.ToyScale2
