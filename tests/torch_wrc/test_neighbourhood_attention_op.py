"""wrc::neighbourhood_attention: parity with two independent formulations (the masked global attention forward, the
gather reference's autograd backward), float64 gradcheck of q, k and v, opcheck of the op and its backward, bfloat16
and float16 against float32, strided inputs, torch.compile without graph breaks, and the dispatch of
wrc.ops.neighbourhood_attention. Shapes cover a non-integer output/grid ratio, non-square maps, a kernel as wide as
the grid, and more than 256 output pixels (several CUDA blocks per map). Without the extension these tests skip, or
fail where a GPU is visible (tests/torch_wrc/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from wrc.layers.cross_attention import global_attention, neighbourhood_mask
from wrc.ops.extension import reference_only
from wrc.ops.neighbourhood_attention import neighbourhood_attention, neighbourhood_attention_reference

# (output size, token grid, kernel): integer ratio, non-integer ratio and non-square, kernel = grid height, kernel =
# the whole grid; each has > 256 output pixels over the batch of 2
SHAPES = [((16, 18), (8, 6), 3), ((17, 13), (7, 5), 3), ((12, 15), (5, 9), 5), ((13, 11), (3, 3), 3)]
HEADS = 2


def problem(device, dtype=torch.float64, out=(6, 5), grid=(4, 3), d=8, c=6, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, *out, generator=g, dtype=torch.float64)
    k = torch.randn(b, d, *grid, generator=g, dtype=torch.float64)
    v = torch.randn(b, c, *grid, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def fused(q, k, v, kernel, average_heads, heads=HEADS, scale=0.6):
    return torch.ops.wrc.neighbourhood_attention(q, k, v, kernel, heads, average_heads, scale)


def reference_grads(q, k, v, kernel, average_heads, upstream, scale=0.6):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = neighbourhood_attention_reference(*leaves, kernel, HEADS, average_heads=average_heads, scale=scale)
    out.backward(upstream.double())
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("average_heads", [False, True])
@pytest.mark.parametrize("out,grid,kernel", SHAPES)
def test_parity_with_the_masked_global_attention_and_the_reference(device, out, grid, kernel, average_heads):
    """Forward: the masked global attention (softmax over all tokens, outside the window masked out); backward: the
    autograd of the gather reference. float32 fused against float64 oracles."""
    q, k, v = problem(device, torch.float32, out=out, grid=grid)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    got = fused(*leaves, kernel, average_heads)
    upstream = torch.randn_like(got)
    got.backward(upstream)
    masked = global_attention(q.double(), k.double(), v.double(), HEADS, average_heads=average_heads, scale=0.6,
                              mask=neighbourhood_mask(out, grid, kernel))
    expected, grads = reference_grads(q, k, v, kernel, average_heads, upstream)
    torch.testing.assert_close(expected, masked, rtol=1e-12, atol=1e-12)  # the two oracles agree
    torch.testing.assert_close(got.double(), masked, rtol=1e-5, atol=1e-5)
    for leaf, want in zip(leaves, grads, strict=True):
        torch.testing.assert_close(leaf.grad.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("average_heads", [False, True])
@pytest.mark.parametrize("out,grid,kernel", [((5, 6), (4, 3), 3), ((3, 2), (3, 5), 3)])
def test_gradcheck_float64(device, out, grid, kernel, average_heads):
    """The full Jacobian in q, k and v, including an output smaller than the grid (each pixel its own parent)."""
    q, k, v = problem(device, out=out, grid=grid, d=4, c=4)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *x: fused(*x, kernel, average_heads), inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(device, dtype):
    q, k, v = problem(device, dtype, out=(6, 5), grid=(4, 3))
    for average_heads in (False, True):
        args = (q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_(), 3, HEADS,
                average_heads, 0.6)
        torch.library.opcheck(torch.ops.wrc.neighbourhood_attention.default, args)
        grad = torch.randn(2, 6, 6, 5, device=device).to(dtype)
        torch.library.opcheck(torch.ops.wrc._neighbourhood_attention_backward.default,
                              (grad, q, k, v, 3, HEADS, average_heads, 0.6))


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1.6e-2), (torch.float16, 2e-3)])
def test_half_precision_accumulates_in_float(device, dtype, tol):
    """Half-precision storage, float accumulation: within a rounding of float32 on the same (rounded) inputs, and no
    worse than the reference run in that dtype."""
    q, k, v = problem(device, dtype, out=(20, 16), grid=(6, 5), d=64, c=32)  # dh = 32 products per logit
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fused(*leaves, 5, False, scale=0.2)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    want, grads = reference_grads(q, k, v, 5, False, upstream, scale=0.2)
    assert out.dtype == dtype and all(t.grad.dtype == dtype for t in leaves)
    for got, expected in zip([out, *(t.grad for t in leaves)], [want, *grads], strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())
    low = neighbourhood_attention_reference(q, k, v, 5, HEADS, scale=0.2)
    assert (out.double() - want).abs().max() <= (low.double() - want).abs().max()


def strided(t: torch.Tensor) -> torch.Tensor:
    out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not out.is_contiguous()
    return out


def test_non_contiguous_inputs_and_upstream_gradient(device):
    q, k, v = problem(device, torch.float32, out=(7, 9), grid=(4, 5))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fused(*leaves, 3, False)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    views = [strided(t).requires_grad_() for t in (q, k, v)]
    out_strided = fused(*views, 3, False)
    out_strided.backward(strided(upstream))
    torch.testing.assert_close(out_strided, out, rtol=1e-6, atol=1e-6)
    for a, b in zip(views, leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


def test_result_does_not_depend_on_the_thread_count():
    """The CPU backward partitions the work by output rows, not by threads, and sums in a fixed order."""
    q, k, v = problem("cpu", torch.float32, out=(24, 20), grid=(6, 5))
    upstream = torch.randn(2, 6, 24, 20, generator=torch.Generator().manual_seed(1))
    previous, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.wrc._neighbourhood_attention_backward(upstream, q, k, v, 3, HEADS, True, 0.6))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_compiles_without_graph_breaks(device):
    q, k, v = problem(device, torch.float32, out=(8, 6), grid=(4, 3))

    def loss(q, k, v):
        return (fused(q, k, v, 3, False) ** 2).sum()

    eager = [t.clone().requires_grad_() for t in (q, k, v)]
    loss(*eager).backward()
    compiled = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.compile(loss, fullgraph=True, backend="aot_eager")(*compiled).backward()  # fullgraph: a break raises
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("average_heads", [False, True])
def test_dispatch_runs_the_op_and_matches_the_reference_path(device, average_heads):
    """wrc.ops.neighbourhood_attention: the fused op when the extension serves the device (its autograd node says
    so), the reference inside reference_only(); the default scale is 1 / sqrt(D / heads) on both paths."""
    q, k, v = problem(device, torch.float32, out=(9, 7), grid=(5, 4))
    q.requires_grad_()
    out = neighbourhood_attention(q, k, v, 3, HEADS, average_heads=average_heads)
    assert "neighbourhood_attention" in type(out.grad_fn).__name__.lower()
    with reference_only():
        expected = neighbourhood_attention(q, k, v, 3, HEADS, average_heads=average_heads)
    assert "neighbourhood_attention" not in type(expected.grad_fn).__name__.lower()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_runs_on_the_current_stream(device):
    """On a side stream held up by a spinning kernel and then an input update, forward and backward see the update."""
    if not device.startswith("cuda"):
        pytest.skip("streams are a CUDA notion")
    q, k, v = problem(device, torch.float32, out=(20, 18), grid=(6, 5))
    leaves = [(q * 1.5).requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()]
    expected = fused(*leaves, 3, False)
    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        with torch.no_grad():
            inputs[0].mul_(1.5)
        out = fused(*inputs, 3, False)
        out.backward(upstream)
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    for a, b in zip(inputs, leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_bad_input_is_a_clear_error():
    q, k, v = problem("cpu", torch.float32, out=(8, 8), grid=(4, 4))
    cases = [
        ((q, k, v, 5, 2, False, 1.0), "needs at least 5 tokens per side"),
        ((q, k, v, 2, 2, False, 1.0), "kernel must be odd"),
        ((q, k, v, 3, 3, False, 1.0), "heads = 3 must divide the query/key channels 8"),
        ((q, k, v[:, :5], 3, 2, False, 1.0), "must divide the value channels 5"),
        ((q, k, v[..., :3], 3, 2, False, 1.0), "v must be \\(B, C, h, w\\) on the keys' grid"),
        ((q, k.double(), v, 3, 2, False, 1.0), "k and v must have q's dtype"),
        ((q.int(), k.int(), v.int(), 3, 2, False, 1.0), "supports float32, float64, float16 and bfloat16"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.wrc.neighbourhood_attention(*args)
    with pytest.raises(RuntimeError, match="grad must be \\(B, C, Ho, Wo\\)"):
        torch.ops.wrc._neighbourhood_attention_backward(torch.zeros(2, 6, 8, 7), q, k, v, 3, 2, False, 1.0)
