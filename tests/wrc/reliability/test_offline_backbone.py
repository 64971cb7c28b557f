"""Guarantee: offline, a pretrained backbone fails at once with the message saying which backbone.weights to pass
(no minute of hub retries), yet still loads when its weights are in the local huggingface_hub or torch hub cache.

No test needs network access: offline mode is set through HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, or the network is
replaced by a resolver that hangs; caches are fake copies built in a temporary directory."""

from __future__ import annotations

import socket
import threading
import time

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

import wrc.backbone as backbone_module
from wrc.backbone import BackboneWeightsError, FrozenBackbone, cached_pretrained_file, host_reachable

HUB_REPO = "timm/test_vit.r160_in1k"  # where timm looks for test_vit's pretrained weights


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty huggingface_hub and torch hub caches, and a spy on timm.create_model(pretrained=True)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    attempts = []
    real = timm.create_model

    def spy(*args, **kwargs):
        if kwargs.get("pretrained"):
            attempts.append(kwargs.get("pretrained_cfg_overlay"))
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    return tmp_path, attempts


@pytest.fixture
def hanging_network(monkeypatch):
    """Online as far as the environment says, but every DNS lookup hangs (a machine without network)."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbone_module, "HUB_CHECK_TIMEOUT_S", 0.2)
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(3)
        raise socket.gaierror("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    yield
    release.set()


def _source_weights() -> dict[str, torch.Tensor]:
    source = timm.create_model("test_vit", pretrained=False)
    torch.nn.init.normal_(source.pos_embed, std=1.0, generator=torch.Generator().manual_seed(3))
    return {k: v.contiguous() for k, v in source.state_dict().items()}


def _fill_hub_cache(root) -> dict[str, torch.Tensor]:
    """A huggingface_hub cache holding test_vit's weights, laid out as hf_hub_download leaves it."""
    repo = root / "hf" / f"models--{HUB_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    weights = _source_weights()
    save_file(weights, str(snapshot / "model.safetensors"))
    return weights


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_without_cache_fails_at_once(empty_caches, monkeypatch, variable):
    _, attempts = empty_caches
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match=rf"offline \({variable}=1\).*backbone.weights=random"):
        FrozenBackbone("test_vit", "pretrained")
    assert time.perf_counter() - start < 5 and attempts == []  # never handed to the hub client


def test_an_unreachable_hub_is_detected_quickly(empty_caches, hanging_network):
    _, attempts = empty_caches
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match=r"huggingface.co did not answer within 0.2 s.*weights=random"):
        FrozenBackbone("test_vit", "pretrained")
    assert time.perf_counter() - start < 2 and attempts == []


def test_offline_loads_from_the_hub_cache(empty_caches, monkeypatch):
    root, attempts = empty_caches
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = _fill_hub_cache(root)
    assert cached_pretrained_file("test_vit").name == "model.safetensors"
    backbone = FrozenBackbone("test_vit", "pretrained")
    torch.testing.assert_close(backbone.model.pos_embed, weights["pos_embed"])
    assert len(attempts) == 1 and attempts[0]["file"].endswith("model.safetensors")


def test_an_unreachable_hub_still_loads_from_the_cache(empty_caches, hanging_network):
    root, _ = empty_caches
    weights = _fill_hub_cache(root)
    start = time.perf_counter()
    backbone = FrozenBackbone("test_vit", "pretrained")
    assert time.perf_counter() - start < 2.5
    torch.testing.assert_close(backbone.model.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])


def test_offline_loads_from_the_torch_hub_cache(empty_caches, monkeypatch):
    """Weights timm would fetch from a URL, already in torch hub's checkpoints/ folder."""
    root, _ = empty_caches
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbone_module, "_pretrained_source",
                        lambda name: (None, [], "https://example.invalid/weights/test_vit_weights.pth"))
    weights = _source_weights()
    (root / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(weights, root / "torch" / "hub" / "checkpoints" / "test_vit_weights.pth")
    backbone = FrozenBackbone("test_vit", "pretrained")
    torch.testing.assert_close(backbone.model.pos_embed, weights["pos_embed"])


def test_host_reachable(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        assert host_reachable("127.0.0.1", server.getsockname()[1], timeout=2)
    finally:
        server.close()

    def refuse(*args, **kwargs):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert not host_reachable("huggingface.co", timeout=1)
