"""Export a feature-to-feature upsampler as a graph: ``torch.export`` (.pt2) with dynamic image sizes, and ONNX.

The exported graph takes ``(features, image)`` and returns the upsampled features: tokens (B, C, h, w) and
the image (B, 3, P h, P w) in [0, 1], P the patch size, so one graph serves every token grid in
[min_tokens, max_tokens]^2 and every batch size (the images the backbone's ``resize`` and ``pad`` size policies
give). The output size is fixed relative to the inputs: the upsampler's default (one native step for LiFT /
WRC, the image's grid for any-size methods) or ``output_scale`` times the token grid. Export runs in eval mode
(dropout off, BatchNorm on its running statistics) and leaves the upsampler's mode as it was.

Two things make the methods exportable without changing their eager outputs:
- ``F.adaptive_max_pool2d`` (the guidance branches of LiFT, WRC, Converse2D) takes its size as ``int[2]`` and
  would pin the graph to the example's size: while tracing, calls with symbolic sizes are served by the
  exact, shape-polymorphic ``wrc.ops.pooling.adaptive_max_pool2d`` (a torch function mode, active only here).
- The torch_wrc kernels are custom ops with fake kernels: ``torch.export`` keeps them as ``torch.ops.wrc.*``
  calls, so loading the .pt2 elsewhere needs ``import torch_wrc`` first (and ``import wrc.ops.reverse_conv``
  for WRC's PCG solve, kernel_size > 2); ``reference_ops=True`` traces the pure-PyTorch reference instead.
  ONNX traces the reference by default, since no ONNX runtime has the kernels.

Ops without an ONNX translation (torch_wrc kernels, WRC's PCG solve, any other non-ATen op) are named in an
``ExportError``, with what to do, before the ONNX conversion starts.

    python -m wrc.export --checkpoint outputs/<run> --out model.pt2 [--onnx model.onnx]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.overrides import TorchFunctionMode

from wrc.ops.extension import reference_only
from wrc.ops.pooling import adaptive_max_pool2d
from wrc.upsamplers.base import Upsampler, get_upsampler_class, list_upsamplers

# Ops that trace fine but have no ONNX translation, with what to do instead (torch_wrc kernels: below).
_ONNX_ADVICE = {
    "wrc_py.pcg_solve": "the PCG solve of WRC with kernel_size > 2; use kernel_size=2 (the exact block solve, "
                        "the paper's setting) or keep the torch.export program (export_upsampler)",
}
_CUSTOM_OP_ADVICE = ("a torch_wrc kernel; export with reference_ops=True (or WRC_DISABLE_EXTENSION=1) to trace "
                     "the pure-PyTorch reference of wrc.ops instead")


class ExportError(RuntimeError):
    """An upsampler (or one of its ops) cannot be exported the way it was asked; the message says what to do."""


class _Graph(nn.Module):
    """The exported signature: (features, image) -> features at a size fixed relative to the inputs."""

    def __init__(self, upsampler: Upsampler, output_scale: int | None) -> None:
        super().__init__()
        self.upsampler, self.output_scale = upsampler, output_scale

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if self.output_scale is None:
            return self.upsampler(features, image)
        size = (features.shape[-2] * self.output_scale, features.shape[-1] * self.output_scale)
        return self.upsampler(features, image, size)


class _SymbolicPooling(TorchFunctionMode):
    """While tracing, adaptive max-pooling to a symbolic size runs the shape-polymorphic formulation."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.adaptive_max_pool2d, F._adaptive_max_pool2d) and not kwargs.get("return_indices", False):
            input, size = args[0], kwargs.get("output_size", args[1] if len(args) > 1 else None)
            size = (size, size) if not isinstance(size, (tuple, list)) else size
            if any(isinstance(s, torch.SymInt) for s in (*input.shape[-2:], *size)) and None not in size:
                return adaptive_max_pool2d(input, tuple(size))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _tracing(upsampler: Upsampler, reference_ops: bool) -> Iterator[None]:
    """Eval mode (dropout off, BatchNorm on running statistics), the pooling mode, and the op implementation."""
    was_training = upsampler.training
    upsampler.eval()
    try:
        with _SymbolicPooling(), (reference_only() if reference_ops else contextlib.nullcontext()):
            yield
    finally:
        upsampler.train(was_training)


def _check_exportable(upsampler: Upsampler, features: torch.Tensor, image: torch.Tensor,
                      output_scale: int | None) -> None:
    if not isinstance(upsampler, Upsampler):
        raise TypeError(f"upsampler must be a wrc Upsampler (built by wrc.create_upsampler or wrc.load_upsampler); "
                        f"got {type(upsampler).__name__}")
    if upsampler.needs_backbone:
        raise ExportError(f"upsampler {upsampler.name!r} runs the backbone inside its forward; only "
                          "feature-to-feature upsamplers export (bilinear, lift, featup_jbu, wrc, converse2d, ...)")
    if output_scale is not None and (isinstance(output_scale, bool) or not isinstance(output_scale, int)
                                     or output_scale < 1):
        raise ValueError(f"output_scale must be a positive int (output = output_scale x the token grid) or None; "
                         f"got {output_scale!r}")
    upsampler._check_inputs(features, image)
    patch = upsampler.patch_size
    grid = tuple(features.shape[-2:])
    if tuple(image.shape[-2:]) != (patch * grid[0], patch * grid[1]):
        raise ValueError(f"image must be (B, 3, P h, P w) = (B, 3, {patch * grid[0]}, {patch * grid[1]}) for "
                         f"features with a {grid[0]}x{grid[1]} token grid and patch_size={patch}; got "
                         f"{tuple(image.shape)} (resize the image to a multiple of the patch first)")


def _dynamic_shapes(features: torch.Tensor, patch: int, min_tokens: int, max_tokens: int,
                    dynamic_batch: bool) -> dict[str, dict[int, Any]]:
    if not 1 <= min_tokens <= min(features.shape[-2:]) or max(features.shape[-2:]) > max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= the example's token grid {tuple(features.shape[-2:])} <= "
                         f"max_tokens; got min_tokens={min_tokens}, max_tokens={max_tokens}")
    h, w = Dim("tokens_h", min=min_tokens, max=max_tokens), Dim("tokens_w", min=min_tokens, max=max_tokens)
    features_dims: dict[int, Any] = {2: h, 3: w}
    image_dims: dict[int, Any] = {2: patch * h, 3: patch * w}
    if dynamic_batch:
        batch = Dim("batch", min=1, max=4096)
        features_dims[0] = image_dims[0] = batch
    return {"features": features_dims, "image": image_dims}


def _example(features: torch.Tensor, image: torch.Tensor, dynamic_batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of one is traced as two (same values): a size-1 example would pin the batch axis to 1."""
    if dynamic_batch and features.shape[0] == 1:
        return features.expand(2, *features.shape[1:]), image.expand(2, *image.shape[1:])
    return features, image


def export_upsampler(upsampler: Upsampler, features: torch.Tensor, image: torch.Tensor, *, dynamic: bool = True,
                     output_scale: int | None = None, dynamic_batch: bool = True, min_tokens: int = 2,
                     max_tokens: int = 512, reference_ops: bool = False) -> ExportedProgram:
    """``torch.export`` an upsampler in eval mode; the program's call is ``program.module()(features, image)``.

    Args:
        upsampler: a feature-to-feature upsampler (its train/eval mode is restored afterwards).
        features: example tokens (B, C, h, w).
        image: example image (B, 3, P h, P w) in [0, 1].
        dynamic: one graph for every token grid in [min_tokens, max_tokens]^2 (image P times that); False
            traces the example's sizes only.
        output_scale: output = output_scale x the token grid; None: the upsampler's default size.
        dynamic_batch: the batch axis is dynamic too.
        min_tokens, max_tokens: the token-grid range of the dynamic graph (sizes outside it are refused when
            the program runs).
        reference_ops: trace the pure-PyTorch reference of wrc.ops instead of the torch_wrc kernels (then the
            .pt2 runs without torch_wrc).
    """
    _check_exportable(upsampler, features, image, output_scale)
    shapes = _dynamic_shapes(features, upsampler.patch_size, min_tokens, max_tokens, dynamic_batch) if dynamic else None
    args = _example(features, image, dynamic and dynamic_batch)
    with _tracing(upsampler, reference_ops):
        try:
            return torch.export.export(_Graph(upsampler, output_scale), args, dynamic_shapes=shapes, strict=False)
        except Exception as err:  # torch's own message is long; keep its head, say what to try
            head = "\n".join(str(err).strip().splitlines()[:12])
            raise ExportError(f"torch.export of upsampler {upsampler.name!r} failed ({type(err).__name__}):\n{head}\n"
                              "With dynamic=False the graph is traced for the example's sizes only; "
                              "torch.export.draft_export gives the full report.") from None


def program_ops(program: ExportedProgram) -> set[str]:
    """``namespace.op`` of every operator call in the program, its nested graphs included (autocast regions are
    nested graphs)."""
    names = set()
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                    names.add(f"{node.target.namespace}.{node.target._opname}")
    return names


def unsupported_onnx_ops(program: ExportedProgram) -> dict[str, str]:
    """Ops of ``program`` that the ONNX exporter cannot translate, each with what to do instead."""
    found = {}
    for name in sorted(program_ops(program)):
        namespace = name.split(".", 1)[0]
        if name in _ONNX_ADVICE:
            found[name] = _ONNX_ADVICE[name]
        elif namespace not in ("aten", "prims"):
            found[name] = _CUSTOM_OP_ADVICE if namespace == "wrc" else "a custom op with no ONNX translation"
    return found


def export_onnx(upsampler: Upsampler, features: torch.Tensor, image: torch.Tensor, path: str | os.PathLike, *,
                dynamic: bool = True, output_scale: int | None = None, dynamic_batch: bool = True,
                min_tokens: int = 2, max_tokens: int = 512, reference_ops: bool = True, optimize: bool = True,
                opset_version: int | None = None) -> Path:
    """Export to ONNX: ``export_upsampler``'s program (its arguments) through ``program_to_onnx``.

    ``reference_ops=False`` keeps the torch_wrc kernels, which ONNX cannot hold: the ``ExportError`` names them.
    """
    _require_onnx()
    program = export_upsampler(upsampler, features, image, dynamic=dynamic, output_scale=output_scale,
                               dynamic_batch=dynamic_batch, min_tokens=min_tokens, max_tokens=max_tokens,
                               reference_ops=reference_ops)
    return program_to_onnx(program, path, optimize=optimize, opset_version=opset_version)


def program_to_onnx(program: ExportedProgram, path: str | os.PathLike, *, optimize: bool = True,
                    opset_version: int | None = None) -> Path:
    """Write an ``export_upsampler`` program as ONNX (torch.onnx's dynamo route); returns the file written.

    Inputs ``features`` and ``image``, output ``upsampled``, with the program's dynamic axes. Needs
    ``pip install onnx onnxscript`` (onnxruntime to run it). Ops without a translation raise an ``ExportError``
    naming them before the conversion starts. The FFT (Converse2D's solve) becomes ONNX DFT nodes; onnxruntime
    (1.32) runs the inverse real DFT only with ``SessionOptions.enable_mem_reuse = False`` (a warning says so).
    """
    _require_onnx()
    name = _upsampler_name(program)
    unsupported = unsupported_onnx_ops(program)
    if unsupported:
        lines = "\n".join(f"  {op}: {advice}" for op, advice in unsupported.items())
        raise ExportError(f"upsampler {name!r} cannot be exported to ONNX; ops with no ONNX translation:\n{lines}")
    fft = sorted(op for op in program_ops(program) if op.startswith("aten.fft_"))
    if fft:
        warnings.warn(f"upsampler {name!r}: {', '.join(fft)} become ONNX DFT nodes; onnxruntime runs the inverse "
                      "real DFT only with SessionOptions.enable_mem_reuse = False (its buffer reuse assumes the "
                      "input's shape)", stacklevel=2)
    try:
        onnx_program = torch.onnx.export(program, (), dynamo=True, optimize=optimize, opset_version=opset_version,
                                         input_names=["features", "image"], output_names=["upsampled"],
                                         verbose=False)
    except Exception as err:
        head = "\n".join(str(err).strip().splitlines()[:12])
        raise ExportError(f"ONNX conversion of upsampler {name!r} failed ({type(err).__name__}):\n{head}\n"
                          "The torch.export program (export_upsampler) still runs in PyTorch.") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path


def _require_onnx() -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo route needs it, and onnx)
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript "
                          "(onnxruntime to run the file)") from None


def _upsampler_name(program: ExportedProgram) -> str:
    """The registered name of the upsampler a program was exported from (read from the graph's module paths)."""
    for node in program.graph.nodes:
        for path, qualified in node.meta.get("nn_module_stack", {}).values():
            if path == "upsampler":
                for name in list_upsamplers():
                    cls = get_upsampler_class(name)
                    if f"{cls.__module__}.{cls.__qualname__}" == qualified:
                        return name
                return qualified.rsplit(".", 1)[-1]
    return "?"


def load_program(path: str | os.PathLike) -> ExportedProgram:
    """``torch.export.load`` with the ops a program may call registered first (torch_wrc's kernels when built,
    WRC's PCG solve), so a .pt2 written by ``export_upsampler`` loads in a fresh process."""
    import wrc.ops.reverse_conv  # noqa: F401  (registers wrc_py::pcg_solve; imports torch_wrc when it is built)

    return torch.export.load(path)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wrc.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a step directory, a checkpoints/ folder or a run directory")
    parser.add_argument("--out", required=True, type=Path, help="the torch.export program to write (.pt2)")
    parser.add_argument("--onnx", type=Path, default=None, help="also write an ONNX file")
    parser.add_argument("--tokens", type=int, nargs=2, default=(16, 16), metavar=("H", "W"),
                        help="token grid of the example traced (the graph takes any grid in [min, max])")
    parser.add_argument("--min-tokens", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--output-scale", type=int, default=None,
                        help="output = this x the token grid (default: the upsampler's default size)")
    parser.add_argument("--static", action="store_true", help="trace the example's sizes only")
    parser.add_argument("--reference-ops", action="store_true",
                        help="trace the pure-PyTorch reference ops (the .pt2 then runs without torch_wrc)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from wrc.checkpoint import load_upsampler

    args = _parse_args(argv)
    upsampler = load_upsampler(args.checkpoint)
    h, w = args.tokens
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, upsampler.in_channels, h, w, generator=generator)
    image = torch.rand(1, 3, h * upsampler.patch_size, w * upsampler.patch_size, generator=generator)
    options: dict[str, Any] = {"dynamic": not args.static, "output_scale": args.output_scale,
                               "min_tokens": args.min_tokens, "max_tokens": args.max_tokens}
    program = export_upsampler(upsampler, features, image, reference_ops=args.reference_ops, **options)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, args.out)
    print(f"program: {args.out}  ({upsampler.name}: (features, image) -> upsampled)")
    if args.onnx is not None:
        if any(op.startswith("wrc.") for op in program_ops(program)):  # ONNX traces the reference ops
            program = export_upsampler(upsampler, features, image, reference_ops=True, **options)
        print(f"   onnx: {program_to_onnx(program, args.onnx)}")


if __name__ == "__main__":
    main()
