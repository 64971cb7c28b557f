"""FeatUp-Implicit: a small network fitted to one image, queried at any resolution up to the image's.

For each image: the backbone sees ``num_jitters`` jittered views (wrc.data.jitter); their features are
compressed by PCA to ``pca_dim`` dimensions; an MLP over Fourier features of (x, y, r, g, b) is fitted
for ``steps`` steps so that, jittered the same way and pooled by an attention downsampler, its output
reproduces the views (Gaussian likelihood with a learned scale, FeatUp's objective; plus total
variation of the magnitude); the result is mapped back through the PCA.

Frequencies. FeatUp log-spaces 30 frequencies over e^[-2, 10], a third of them above the Nyquist
frequency of a 224-pixel grid, a known source of aliasing artefacts. Here the top frequency is the
Nyquist frequency of the grid the network is fitted on (pi (N - 1) / 2 for N pixels on [-1, 1]), so
nothing it learns aliases; smaller outputs are evaluated on that grid and area-downsampled
(antialiased), never sampled directly. Outputs above the image's resolution are refused: the network
has no information beyond the image's Nyquist limit (resize the image first to ask for more).

Fits are cached by a hash of the image, its features and the fitting settings (in memory, and on disk
with ``cache_dir``), so evaluating the same image twice does not fit twice.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from wrc.data.jitter import apply_jitter, sample_jitter
from wrc.layers.downsamplers import AttentionDownsampler
from wrc.layers.uncertainty import ScaleNet
from wrc.losses import gaussian_nll, total_variation
from wrc.upsamplers.base import Upsampler, register_upsampler, resize


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nyquist(pixels: int) -> float:
    """Angular Nyquist frequency of ``pixels`` samples spread over [-1, 1]."""
    return math.pi * max(pixels - 1, 1) / 2


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every pixel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ImplicitField(nn.Module):
    """(x, y, r, g, b) per pixel -> features: Fourier features with learned phases, then a small MLP.

    Args:
        out_dim: output channels (the PCA dimension).
        num_freqs: log-spaced frequencies from e^-2 to ``max_freq``.
        max_freq: the top angular frequency (the fitting grid's Nyquist frequency).
        width, dropout: of the MLP.
    """

    def __init__(self, out_dim: int, num_freqs: int, max_freq: float, width: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        low = -2.0
        self.register_buffer("freqs", torch.exp(torch.linspace(low, max(math.log(max_freq), low), num_freqs)))
        inputs = 5 * num_freqs
        self.phase_sin = nn.Parameter(torch.randn(inputs))
        self.phase_cos = nn.Parameter(torch.randn(inputs))
        self.mlp = nn.Sequential(
            ChannelNorm(2 * inputs + 3), nn.Dropout2d(dropout), nn.Conv2d(2 * inputs + 3, width, 1), nn.ReLU(),
            nn.Dropout2d(dropout), ChannelNorm(width), nn.Conv2d(width, width, 1), nn.ReLU(),
            nn.Conv2d(width, out_dim, 1),
        )

    @staticmethod
    def inputs(image: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W): pixel-centre coordinates on [-1, 1] and the colours min-max scaled to [-0.5, 0.5]."""
        b, _, height, width = image.shape
        ys = torch.linspace(-1, 1, height, device=image.device)[:, None].expand(height, width)
        xs = torch.linspace(-1, 1, width, device=image.device)[None, :].expand(height, width)
        low = image.amin(dim=(-2, -1), keepdim=True)
        colour = (image - low) / (image.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-6) - 0.5
        return torch.cat([torch.stack([ys, xs]).expand(b, 2, height, width), colour], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.inputs(image)
        b, c, height, width = x.shape
        phases = (x[:, :, None] * self.freqs[:, None, None]).reshape(b, c * len(self.freqs), height, width)
        fourier = [torch.sin(phases + self.phase_sin[:, None, None]), torch.cos(phases + self.phase_cos[:, None, None])]
        return self.mlp(torch.cat([*fourier, image], dim=1))


@dataclass
class FittedField:
    """One image's fitted network and PCA, on the CPU (what the cache stores)."""

    state: dict[str, torch.Tensor]
    mean: torch.Tensor  # (C,)
    components: torch.Tensor  # (C, k)
    losses: list[float]
    seconds: dict[str, float]  # "views" (jitter bank and PCA) and "steps" (the optimisation)


@register_upsampler
class FeatUpImplicit(Upsampler):
    """Args:
    steps: optimisation steps per image (FeatUp: 1200).
    num_jitters: jittered views computed per image (FeatUp: 3000); views_per_step are drawn from them.
    views_per_step: views per step (FeatUp: 10).
    max_pad, max_zoom: jitter ranges (FeatUp: 30, 1.8).
    pca_dim: PCA dimension of the fitted features (FeatUp: 128); pca_views: views the PCA is fitted on.
    num_freqs, width, dropout: of the network (FeatUp: 30, 128, 0.2).
    downsampler_kernel: attention window in pixels (None = 2 P - 1, close to FeatUp's 29 for P = 16).
    lr: NAdam learning rate (FeatUp: PyTorch's default 2e-3).
    tv_weight: total variation of the fitted magnitude (FeatUp: 0.05).
    seed: seed of the jitters and the initialisation (a fit is a deterministic function of the image).
    cache_size: fits kept in memory; cache_dir: also keep them on disk.
    progress: show a progress bar per fit.
    """

    name = "featup_implicit"
    needs_backbone = True
    trainable = False

    def __init__(self, in_channels: int, patch_size: int, *, steps: int = 1200, num_jitters: int = 512,
                 views_per_step: int = 10, max_pad: int = 30, max_zoom: float = 1.8, pca_dim: int = 128,
                 pca_views: int = 50, num_freqs: int = 30, width: int = 128, dropout: float = 0.2,
                 downsampler_kernel: int | None = None, lr: float = 2e-3, tv_weight: float = 0.05, seed: int = 0,
                 cache_size: int = 64, cache_dir: str | None = None, progress: bool = True) -> None:
        super().__init__(in_channels, patch_size)
        if steps < 1 or num_jitters < 1 or views_per_step < 1 or pca_dim < 1:
            raise ValueError("steps, num_jitters, views_per_step and pca_dim must be >= 1")
        self.settings = {
            "steps": steps, "num_jitters": num_jitters, "views_per_step": views_per_step, "max_pad": max_pad,
            "max_zoom": max_zoom, "pca_dim": min(pca_dim, in_channels), "pca_views": pca_views,
            "num_freqs": num_freqs, "width": width, "dropout": dropout,
            "downsampler_kernel": downsampler_kernel or 2 * patch_size - 1, "lr": lr, "tv_weight": tv_weight,
            "seed": seed,
        }
        self.cache_size, self.progress = cache_size, progress
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._cache: OrderedDict[str, FittedField] = OrderedDict()
        self.fits = 0  # fits run by this instance (cache misses)

    # -- caching ------------------------------------------------------------------------------------------------

    def cache_key(self, features: torch.Tensor, image: torch.Tensor) -> str:
        digest = hashlib.sha256()
        for t in (image, features):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        digest.update(repr(sorted(self.settings.items())).encode())
        return digest.hexdigest()

    def fitted(self, features: torch.Tensor, image: torch.Tensor, backbone: nn.Module) -> FittedField:
        key = self.cache_key(features, image)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.cache_dir / f"{key}.pt" if self.cache_dir else None
        if path is not None and path.exists():
            field = FittedField(**torch.load(path, weights_only=True))
        else:
            field = self.fit(features, image, backbone)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(vars(field), path)
        self._cache[key] = field
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return field

    # -- fitting ------------------------------------------------------------------------------------------------

    def make_field(self, out_dim: int, pixels: int) -> ImplicitField:
        s = self.settings
        return ImplicitField(out_dim, s["num_freqs"], nyquist(pixels), s["width"], s["dropout"])

    @torch.enable_grad()
    def fit(self, features: torch.Tensor, image: torch.Tensor, backbone: nn.Module) -> FittedField:
        """Fit one image: features (1, C, h, w), image (1, 3, h P, w P)."""
        s, device = self.settings, features.device
        self.fits += 1
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(s["seed"])
            jitters = [sample_jitter(*image.shape[-2:], s["max_pad"], s["max_zoom"]) for _ in range(s["num_jitters"])]
            with torch.no_grad():
                views = torch.cat([backbone(torch.cat([apply_jitter(image, j) for j in jitters[i : i + 32]]))
                                   for i in range(0, len(jitters), 32)])  # N, C, h, w
            flat = views[: s["pca_views"]].permute(0, 2, 3, 1).reshape(-1, views.shape[1])
            mean = flat.mean(dim=0)
            k = min(s["pca_dim"], *flat.shape)
            _, _, components = torch.pca_lowrank(flat - mean, q=k, center=False, niter=4)
            targets = torch.einsum("nchw,ck->nkhw", views - mean[:, None, None], components)

            field = self.make_field(k, min(image.shape[-2:])).to(device)
            down = AttentionDownsampler(k, s["downsampler_kernel"]).to(device)
            scale_net = ScaleNet(k).to(device)
            params = [*field.parameters(), *down.parameters(), *scale_net.parameters()]
            optimizer = torch.optim.NAdam(params, lr=s["lr"])
            grid = tuple(views.shape[-2:])
            losses = []
            _synchronize(device)
            views_done = time.perf_counter()
            for _ in tqdm(range(s["steps"]), desc="featup_implicit fit", disable=not self.progress, leave=False):
                hr = field(image)  # 1, k, H, W
                picks = torch.randint(len(jitters), (s["views_per_step"],)).tolist()
                pred = down(torch.cat([apply_jitter(hr, jitters[i]) for i in picks]), grid)
                target = targets[picks]
                loss = gaussian_nll(pred, target, scale_net(target))
                if s["tv_weight"]:
                    loss = loss + s["tv_weight"] * total_variation(hr.norm(dim=1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        _synchronize(device)
        seconds = {"views": views_done - started, "steps": time.perf_counter() - views_done}
        state = {name: t.detach().cpu() for name, t in field.state_dict().items()}
        return FittedField(state, mean.cpu(), components.cpu(), losses, seconds)

    # -- querying -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, field: FittedField, image: torch.Tensor) -> torch.Tensor:
        """The fitted features (1, C, H, W) on the image's pixel grid."""
        net = self.make_field(field.components.shape[1], min(image.shape[-2:]))
        net.load_state_dict(field.state)
        net = net.to(image.device).eval()
        compressed = net(image)
        components, mean = field.components.to(image.device), field.mean.to(image.device)
        return torch.einsum("bkhw,ck->bchw", compressed, components) + mean[:, None, None]

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        pixels = (features.shape[-2] * self.patch_size, features.shape[-1] * self.patch_size)
        if size[0] > pixels[0] or size[1] > pixels[1]:
            raise ValueError(f"featup_implicit is fitted on the image's {pixels[0]}x{pixels[1]} pixel grid and cannot "
                             f"answer {size[0]}x{size[1]}: it has no detail above the image's resolution (pass a "
                             "larger image to ask for more)")
        image = resize(image, pixels)
        outs = []
        for b in range(features.shape[0]):
            field = self.fitted(features[b : b + 1], image[b : b + 1], backbone)
            outs.append(self.evaluate(field, image[b : b + 1]))
        return resize(torch.cat(outs), size)
