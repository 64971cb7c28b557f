"""Today's backbone families (DINOv3, SigLIP2, RADIO) and the attention facets of every timm attention style.

Each family is a shrunk, randomly initialised timm model (``model_args``: 2 blocks, 64 channels, 2 heads). Oracles:
timm's own ``forward_features`` sliced by the prefix-token count of the model card (tokens); the block's weights
applied by hand (query/key/value); the attention's own output recomputed from the three facets plus timm's rotary
embedding (the rotary convention).
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import apply_rot_embed_cat
from torch import nn

from wrc.backbone import FrozenBackbone

SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2}

# id: (timm name, extra model args, prefix tokens by the model card: class token + registers / summary tokens)
FAMILIES = {
    "dinov3": ("vit_small_patch16_dinov3", {}, 5),  # Eva, RoPE, fused qkv without bias; cls + 4 registers
    "dinov3_qkvb": ("vit_small_patch16_dinov3_qkvb", {}, 5),  # fused qkv + separate q/v bias (bypasses .qkv)
    "dinov3_unfused_qknorm": ("vit_small_patch16_dinov3", {"qkv_fused": False, "qk_norm": True}, 5),
    "eva_rope_attention_gqa": (  # timm's AttentionRope, separate projections, one key/value head
        "vit_small_patch16_dinov3", {"attn_type": "rope", "qkv_fused": False, "num_kv_heads": 1}, 5),
    "siglip2": ("vit_base_patch16_siglip_224", {}, 0),  # classic Attention, no class token
    "siglip2_naflex": ("naflexvit_base_patch16_siglip", {}, 0),
    "radio": ("vit_base_patch16_radio_v3", {}, 8),  # cls + 7 (other teachers' summary tokens, registers)
    "radio_naflex": ("naflexvit_base_patch16_radio_v3", {}, 8),
}
FACET_NAMES = ("query", "key", "value")


def make(family: str, facet: str = "token", **kwargs) -> FrozenBackbone:
    name, extra, _ = FAMILIES[family]
    backbone = FrozenBackbone(name, "random", facet=facet, model_args={**SMALL, **extra}, **kwargs)
    randomise_biases_and_norms(backbone.model)
    return backbone


@torch.no_grad()
def randomise_biases_and_norms(model: nn.Module) -> None:
    """timm initialises biases to zero and norms to identity; random ones make every bias path and qk-norm count."""
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if name.endswith(("bias", "q_norm.weight", "k_norm.weight")):
            centre = 1.0 if name.endswith("weight") else 0.0
            param.copy_(centre + 0.5 * torch.randn(param.shape, generator=generator))


def normalised(backbone: FrozenBackbone, image: torch.Tensor) -> torch.Tensor:
    return (image - backbone.mean) / backbone.std


def to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def per_head_norm(t: torch.Tensor, module: nn.Module, head_dim: int) -> torch.Tensor:
    """qk-norm by hand: LayerNorm over each head's channels (identity when the model has none)."""
    if isinstance(module, nn.Identity):
        return t
    heads = t.unflatten(-1, (-1, head_dim))
    mean, var = heads.mean(-1, keepdim=True), heads.var(-1, unbiased=False, keepdim=True)
    return (((heads - mean) / torch.sqrt(var + module.eps)) * module.weight + module.bias).flatten(-2)


def reference_qkv(attn: nn.Module, h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Query (after qk-norm), key (after qk-norm) and value tokens of ``h`` from the attention's weights, by hand."""
    if getattr(attn, "qkv", None) is not None:
        weight = attn.qkv.weight
        rows = weight.shape[0] // 3
        bias = attn.qkv.bias
        if bias is None and getattr(attn, "q_bias", None) is not None:  # Eva: q and v biases, no key bias
            bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
        qkv = h @ weight.T + (bias if bias is not None else 0)
        q, k, v = qkv[..., :rows], qkv[..., rows : 2 * rows], qkv[..., 2 * rows :]
    else:
        q, k, v = (h @ p.weight.T + (p.bias if p.bias is not None else 0)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return {"query": per_head_norm(q, attn.q_norm, attn.head_dim),
            "key": per_head_norm(k, attn.k_norm, attn.head_dim), "value": v}


@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_drop_the_prefix_tokens(family):
    """Non-square image: the token facet is timm's forward_features (final norm) minus the model card's prefix."""
    backbone = make(family)
    prefix = FAMILIES[family][2]
    image = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = backbone.model.forward_features(normalised(backbone, image))
    assert backbone.num_prefix_tokens == prefix and backbone.patch_size == 16
    assert tokens.shape[1] == prefix + 3 * 5
    out = backbone(image)
    assert out.shape == (1, 64, 3, 5)
    torch.testing.assert_close(out, to_map(tokens[:, prefix:], (3, 5)))


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_facets_match_the_block_weights(family):
    """query/key/value of the last block == its norm1 + projection (+ bias, + qk-norm) applied by hand."""
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    reference = make(family)
    model = reference.model
    with torch.no_grad():  # the last block's input (patch tokens): the first block's output
        block_input = model.forward_intermediates(normalised(reference, image), indices=[0], norm=False,
                                                  output_fmt="NLC", intermediates_only=True)[0]
        expected = reference_qkv(model.blocks[-1].attn, model.blocks[-1].norm1(block_input))
    for facet in FACET_NAMES:
        backbone = make(family, facet=facet)
        out = backbone(image)
        assert backbone.embed_dim == expected[facet].shape[-1] == out.shape[1]
        torch.testing.assert_close(out, to_map(expected[facet], (2, 3)), msg=f"{family} {facet}")


@pytest.mark.parametrize("extra", [{}, {"qkv_bias": True}, {"attn_type": "rope", "qkv_fused": False}],
                         ids=["eva_attention", "eva_attention_qkv_bias", "attention_rope"])
def test_query_and_key_are_taken_before_the_rotary_embedding(extra):
    """Rotating the query and key facets with timm's RoPE and attending over the value facet gives back the
    attention's own output; the unrotated facets do not (so the facets are the pre-rotary ones, and the rotation
    matters). DINOv3 without class token and registers, so that the facets cover the whole sequence."""
    args = {**SMALL, "class_token": False, "num_reg_tokens": 0, **extra}
    backbones = {f: FrozenBackbone("vit_small_patch16_dinov3", "random", facet=f, model_args=args) for f in FACET_NAMES}
    for backbone in backbones.values():
        randomise_biases_and_norms(backbone.model)
    model = backbones["key"].model
    attn = model.blocks[-1].attn
    seen: dict[str, torch.Tensor] = {}
    handles = [
        attn.register_forward_pre_hook(lambda _m, _args, kwargs: seen.update(rope=kwargs["rope"]), with_kwargs=True),
        attn.register_forward_hook(lambda _m, _args, out: seen.update(out=out)),
    ]
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.forward_features(normalised(backbones["key"], image))
    for handle in handles:
        handle.remove()
    assert backbones["key"].num_prefix_tokens == 0
    q, k, v = (backbones[f](image).flatten(2).transpose(1, 2).unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
               for f in FACET_NAMES)  # 1, heads, N, head_dim

    def attend(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(q @ k.transpose(-2, -1) * attn.head_dim**-0.5, dim=-1)
        return attn.proj(attn.norm((weights @ v).transpose(1, 2).flatten(2)))

    rotated_q, rotated_k = (apply_rot_embed_cat(t, seen["rope"], half=attn.rotate_half) for t in (q, k))
    assert (rotated_k - k).abs().max() > 1e-2  # the rotation is not the identity here
    with torch.no_grad():
        torch.testing.assert_close(attend(rotated_q, rotated_k), seen["out"])
        assert not torch.allclose(attend(q, k), seen["out"], atol=1e-4)


def test_grouped_query_attention_keys_have_fewer_channels():
    query = make("eva_rope_attention_gqa", facet="query", layer=[0, 1])
    key = make("eva_rope_attention_gqa", facet="key", layer=[0, 1])
    image = torch.rand(1, 3, 32, 48)
    assert (query.embed_dim, key.embed_dim) == (128, 64)  # 2 layers x (2 heads | 1 kv head) x 32
    assert query(image).shape == (1, 128, 2, 3) and key(image).shape == (1, 64, 2, 3)


@pytest.mark.parametrize("facet", FACET_NAMES)
def test_a_model_without_a_supported_attention_names_the_supported_facets(facet):
    name = "vit_base_patch16_xp_224"  # parallel blocks: attention and MLP share one fused input projection
    with pytest.raises(ValueError, match=rf"backbone.facet='{facet}' is not available for backbone.name='{name}'"
                                         r".*ParallelScalingBlock.*supported facets for this model: \('token',\)"):
        FrozenBackbone(name, "random", facet=facet, model_args=SMALL)
    assert FrozenBackbone(name, "random", model_args=SMALL)(torch.rand(1, 3, 32, 48)).shape == (1, 64, 2, 3)


@pytest.mark.parametrize("family", ["dinov3", "siglip2", "radio_naflex"])
def test_any_image_size_and_aspect(family):
    """Position embeddings follow the grid: RoPE (DINOv3), interpolated learned ones (SigLIP2), NaFlex (RADIO)."""
    backbone = make(family, facet="key")
    assert getattr(backbone.model, "dynamic_img_size", True)  # NaFlexVit has no such flag: always dynamic
    assert backbone(torch.rand(1, 3, 80, 48)).shape == (1, 64, 5, 3)
    assert backbone(torch.rand(2, 3, 40, 70)).shape == (2, 64, 2, 4)  # resized to the nearest multiple of 16


def test_patch_size_and_stride_come_from_the_model():
    backbone = FrozenBackbone("vit_small_patch16_dinov3", "random", model_args={**SMALL, "patch_size": 8})
    assert backbone.patch_size == 8 and backbone(torch.rand(1, 3, 48, 80)).shape == (1, 64, 6, 10)
    strided = make("dinov3", facet="key")
    assert strided(torch.rand(1, 3, 48, 80), stride=8).shape == (1, 64, 5, 9)  # (side - 16) // 8 + 1
    with pytest.raises(ValueError, match="stride=8 needs a convolutional patch embedding"):
        make("radio_naflex")(torch.rand(1, 3, 48, 80), stride=8)


def test_spec_rebuilds_the_same_shrunk_model():
    backbone = FrozenBackbone("vit_small_patch16_dinov3", "random", facet="value", model_args=SMALL)
    spec = backbone.spec()
    assert spec["model_args"] == SMALL
    image = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(FrozenBackbone(**spec)(image), backbone(image))
    assert "model_args" not in FrozenBackbone("test_vit", "random").spec()


def test_rotary_facets_under_bf16_autocast():
    image = torch.rand(1, 3, 32, 48)
    out = make("dinov3", facet="key", precision="bf16")(image)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, make("dinov3", facet="key")(image), atol=0.1, rtol=0.1)


def test_naflex_models_take_no_dynamic_img_size_flag():
    backbone = make("radio_naflex")
    assert not hasattr(backbone.model, "patch_embed") and backbone.patch_size == 16
    with pytest.raises(TypeError, match="dynamic_img_size"):
        FrozenBackbone("naflexvit_base_patch16_radio_v3", "random", model_args={**SMALL, "dynamic_img_size": True})

