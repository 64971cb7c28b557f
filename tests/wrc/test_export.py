"""Export of every feature-to-feature upsampler: torch.export with dynamic sizes, ONNX, and the clear refusals.

Each exported graph is checked against the eager upsampler (the oracle: the code that was traced, run by
PyTorch as usual) at the size it was traced at and at another one, with another batch size. Weights are random
and perturbed, so that branches initialised to zero (resize-conv's convolutions, WRC's head) take part.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F

from wrc.checkpoint import save_checkpoint
from wrc.export import (
    ExportError,
    export_onnx,
    export_upsampler,
    load_program,
    main,
    program_ops,
    program_to_onnx,
    unsupported_onnx_ops,
)
from wrc.ops.pooling import adaptive_max_pool2d
from wrc.ops.reverse_conv import weighted_reverse_conv
from wrc.upsamplers import Upsampler, create_upsampler

CHANNELS, PATCH = 8, 8
TINY = {  # the smallest settings that keep each method's structure
    "lift": {"image_channels": 4},
    "wrc": {"image_channels": 4},
    "converse2d": {"image_channels": 4},
    "featup_jbu": {"num_layers": 2, "radius": 1, "key_dim": 4},
    "resize_conv": {"num_layers": 2},
    "transposed_conv": {"num_layers": 2},
}
# the methods of the export issue, and the variants that share their code
SLOW_TO_TRACE = {"featup_jbu", "wrc", "converse2d"}  # 10-20 s each on 2 cores
FEATURE_TO_FEATURE = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TO_TRACE else name
                      for name in ("bilinear", "bicubic", "nearest", "lift", "featup_jbu", "wrc", "converse2d",
                                   "resize_conv", "transposed_conv")]
ONNX_METHODS = ["bilinear", "lift", "featup_jbu", "wrc", "converse2d", "resize_conv", "transposed_conv"]
EXPORT_GRID, OTHER_GRID = (4, 5), (3, 6)


def inputs(grid: tuple[int, int], batch: int, device: str = "cpu", patch: int = PATCH, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, CHANNELS, *grid, generator=generator)
    image = torch.rand(batch, 3, patch * grid[0], patch * grid[1], generator=generator)
    return features.to(device), image.to(device)


def upsampler(name: str, device: str = "cpu", patch: int = PATCH, **kwargs) -> Upsampler:
    """One model per method and setting, random weights perturbed (so zero-initialised branches take part)."""
    return _upsampler(name, device, patch, tuple(sorted(kwargs.items())))


def program(name: str, device: str = "cpu", patch: int = PATCH, reference_ops: bool = False,
            **kwargs) -> torch.export.ExportedProgram:
    """One export per method and setting, shared by the tests (tracing is the slow part)."""
    return _program(name, device, patch, reference_ops, tuple(sorted(kwargs.items())))


@functools.cache
def _upsampler(name: str, device: str, patch: int, kwargs: tuple) -> Upsampler:
    torch.manual_seed(0)
    model = create_upsampler(name, CHANNELS, patch, **{**TINY.get(name, {}), **dict(kwargs)})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.to(device).eval()


@functools.cache
def _program(name: str, device: str, patch: int, reference_ops: bool, kwargs: tuple) -> torch.export.ExportedProgram:
    model = _upsampler(name, device, patch, kwargs)
    return export_upsampler(model, *inputs(EXPORT_GRID, 2, device, patch), reference_ops=reference_ops)


def onnx_ready_program(name: str) -> torch.export.ExportedProgram:
    """The shared program when it holds no torch_wrc kernel, else the one traced through the reference ops."""
    exported = program(name)
    return program(name, reference_ops=True) if any(op.startswith("wrc.") for op in program_ops(exported)) else exported


def expected_size(model: Upsampler, grid: tuple[int, int]) -> tuple[int, int]:
    factor = model.patch_size if model.scale is None else model.scale
    return grid[0] * factor, grid[1] * factor


def torch_wrc_loaded() -> bool:
    import torch_wrc

    return torch_wrc.is_available()


@pytest.mark.parametrize("name", FEATURE_TO_FEATURE)
def test_exported_program_matches_eager_at_two_sizes(name, device):
    model, exported = upsampler(name, device), program(name, device)
    for grid, batch in ((EXPORT_GRID, 2), (OTHER_GRID, 1)):
        features, image = inputs(grid, batch, device, seed=1)
        out = exported.module()(features, image)
        assert out.shape == (batch, CHANNELS, *expected_size(model, grid))
        torch.testing.assert_close(out, model(features, image), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "antialiased"])
def test_featup_jbu_presets_export_for_patch_14(preset):
    """Patch 14 with four layers: the stack overshoots (16 cells per token for 14 px) and shrinks to the image, the
    paper preset plainly and the antialiased one with a filter; the paper's guidance pooling has uneven windows."""
    model = upsampler("featup_jbu", patch=14, preset=preset, num_layers=4)
    exported = program("featup_jbu", patch=14, preset=preset, num_layers=4)
    for grid in (EXPORT_GRID, OTHER_GRID):
        features, image = inputs(grid, 1, patch=14, seed=1)
        torch.testing.assert_close(exported.module()(features, image), model(features, image), atol=1e-5, rtol=1e-5)


def test_fractional_guidance_pooling_exports_for_patch_14():
    """Patch 14: LiFT's adaptive max-pool has bins of 1 and 2 cells, whose layout changes with the size."""
    model, exported = upsampler("lift", patch=14), program("lift", patch=14)
    for grid in (EXPORT_GRID, OTHER_GRID, (7, 2)):
        features, image = inputs(grid, 1, patch=14, seed=2)
        torch.testing.assert_close(exported.module()(features, image), model(features, image), atol=1e-5, rtol=1e-5)


def test_output_scale_fixes_the_output_relative_to_the_token_grid():
    model = upsampler("lift")
    exported = export_upsampler(model, *inputs(EXPORT_GRID, 2), output_scale=4)  # two LiFT steps
    features, image = inputs(OTHER_GRID, 1, seed=3)
    out = exported.module()(features, image)
    assert out.shape[-2:] == (12, 24)
    torch.testing.assert_close(out, model(features, image, (12, 24)), atol=1e-5, rtol=1e-5)


def test_torch_wrc_kernels_stay_custom_ops_and_survive_a_pt2_round_trip(tmp_path):
    if not torch_wrc_loaded():
        pytest.skip("torch_wrc is not built: the methods trace the reference either way")
    assert "wrc.block_solve" in program_ops(program("wrc"))
    assert "wrc.adaptive_conv" in program_ops(program("featup_jbu"))
    torch.export.save(program("wrc"), tmp_path / "wrc.pt2")
    loaded = load_program(tmp_path / "wrc.pt2")
    features, image = inputs(OTHER_GRID, 1, seed=4)
    torch.testing.assert_close(loaded.module()(features, image), upsampler("wrc")(features, image),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_reference_ops_trace_the_pure_pytorch_operators():
    reference = onnx_ready_program("featup_jbu")
    assert {op for op in program_ops(reference) if not op.startswith("aten.")} == set()
    features, image = inputs(OTHER_GRID, 1, seed=4)
    torch.testing.assert_close(reference.module()(features, image), upsampler("featup_jbu")(features, image),
                               atol=1e-5, rtol=1e-5)


def test_static_export_refuses_other_sizes_and_dynamic_refuses_off_patch_images():
    model = upsampler("bilinear")
    static = export_upsampler(model, *inputs(EXPORT_GRID, 2), dynamic=False)
    with pytest.raises(AssertionError, match=r"features.size\(\)\[2\] == 4"):
        static.module()(*inputs(OTHER_GRID, 2))
    features, image = inputs(OTHER_GRID, 1)
    with pytest.raises(AssertionError, match=r"image.size\(\)\[3\] == 8 \* features.size\(\)\[3\]"):
        program("bilinear").module()(features, image[..., :-1])


def test_bad_arguments_name_what_is_expected():
    model = upsampler("bilinear")
    features, image = inputs(EXPORT_GRID, 2)
    with pytest.raises(ValueError, match=r"image must be \(B, 3, P h, P w\) = \(B, 3, 32, 40\)"):
        export_upsampler(model, features, image[..., :-1])
    with pytest.raises(ValueError, match="output_scale must be a positive int"):
        export_upsampler(model, features, image, output_scale=0)
    with pytest.raises(ValueError, match="min_tokens"):
        export_upsampler(model, features, image, min_tokens=5)
    with pytest.raises(TypeError, match="must be a wrc Upsampler"):
        export_upsampler(torch.nn.Identity(), features, image)


def test_backbone_in_the_loop_methods_are_refused():
    class RunsBackbone(Upsampler):
        name, needs_backbone = "toy_backbone_side", True

    with pytest.raises(ExportError, match="runs the backbone inside its forward"):
        export_upsampler(RunsBackbone(CHANNELS, PATCH), *inputs(EXPORT_GRID, 2))


def test_shape_polymorphic_pooling_equals_adaptive_max_pool2d():
    """Every bin layout up to 12 cells, pooling and enlarging, against PyTorch's own adaptive max-pool."""
    generator = torch.Generator().manual_seed(0)
    for length in range(1, 13):
        x = torch.randn(2, 3, length, 13 - length, generator=generator)
        for size in range(1, 13):
            assert torch.equal(adaptive_max_pool2d(x, (size, 13 - size)), F.adaptive_max_pool2d(x, (size, 13 - size)))


class SolvesByPCG(Upsampler):
    """A 2x step through WRC's k > s solve (PCG, an opaque Python custom op), the smallest graph that holds it."""

    name, scale = "toy_pcg", 2

    def __init__(self, in_channels: int, patch_size: int) -> None:
        super().__init__(in_channels, patch_size)
        self.kernel = torch.nn.Parameter(torch.full((in_channels, 3, 3), 1 / 9))

    def upsample_step(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        prior = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=False)
        return weighted_reverse_conv(features, prior, self.kernel, 2, torch.ones_like(features),
                                     torch.ones_like(prior), padding=1)


def test_unsupported_onnx_ops_are_named_with_what_to_do():
    model = SolvesByPCG(CHANNELS, PATCH)
    pcg = export_upsampler(model, *inputs(EXPORT_GRID, 2))
    features, image = inputs(OTHER_GRID, 1, seed=5)
    torch.testing.assert_close(pcg.module()(features, image), model(features, image), atol=1e-5, rtol=1e-5)
    assert "kernel_size=2" in unsupported_onnx_ops(pcg)["wrc_py.pcg_solve"]
    if torch_wrc_loaded():
        assert "reference_ops=True" in unsupported_onnx_ops(program("featup_jbu"))["wrc.adaptive_conv"]
    assert unsupported_onnx_ops(program("lift")) == {}


def test_export_cli_writes_a_program_from_a_run_directory(tmp_path):
    model = upsampler("transposed_conv")
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000001", model, {})
    main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt2"), "--tokens", "4", "5"])
    loaded = load_program(tmp_path / "model.pt2")
    features, image = inputs(OTHER_GRID, 3, seed=6)
    torch.testing.assert_close(loaded.module()(features, image), model(features, image), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ONNX (skipped without onnx, onnxscript and onnxruntime)
# ---------------------------------------------------------------------------------------------------------------


def run_onnx(path, features: torch.Tensor, image: torch.Tensor, mem_reuse: bool = True) -> torch.Tensor:
    onnxruntime = pytest.importorskip("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.enable_mem_reuse = mem_reuse
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"features": features.numpy(), "image": image.numpy()})[0])


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TO_TRACE else name
                                  for name in ONNX_METHODS])
def test_onnx_file_matches_eager_at_two_sizes(name, tmp_path):
    """bilinear goes through export_onnx with its defaults; the others convert the shared program without the
    ONNX optimiser (the translation is what is tested, at a third of the time)."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = upsampler(name)
    uses_fft = name == "converse2d"  # onnxruntime runs its inverse real DFT only without buffer reuse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name == "bilinear":
            path = export_onnx(model, *inputs(EXPORT_GRID, 2), tmp_path / f"{name}.onnx")
        else:
            path = program_to_onnx(onnx_ready_program(name), tmp_path / f"{name}.onnx", optimize=False)
    assert any("enable_mem_reuse" in str(w.message) for w in caught) == uses_fft
    for grid, batch in ((EXPORT_GRID, 2), (OTHER_GRID, 1)):
        features, image = inputs(grid, batch, seed=7)
        out = run_onnx(path, features, image, mem_reuse=not uses_fft)
        torch.testing.assert_close(out, model(features, image), atol=1e-5, rtol=1e-5)


def test_export_onnx_refuses_ops_without_a_translation(tmp_path):
    pytest.importorskip("onnxscript")
    with pytest.raises(ExportError, match=r"(?s)no ONNX translation:.*wrc_py\.pcg_solve: .*kernel_size=2"):
        export_onnx(SolvesByPCG(CHANNELS, PATCH), *inputs(EXPORT_GRID, 2), tmp_path / "pcg.onnx")
    if torch_wrc_loaded():
        with pytest.raises(ExportError, match=r"wrc\.adaptive_conv: a torch_wrc kernel; export with reference_ops"):
            program_to_onnx(program("featup_jbu"), tmp_path / "kernels.onnx")
    assert not list(tmp_path.iterdir())
