"""The settings of the report written after training (``evaluate.*`` of config/train.yaml), written once here.

Kept free of torch and timm: train_wrc.py stores this dataclass in Hydra's ConfigStore before composing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wrc.settings import require_at_least_one


@dataclass
class ReportSettings:
    enabled: bool = True
    root: str | None = None  # held-out images; None = the built-in held-out sample scenes
    num_images: int = 8
    image_size: int = 224  # centre crops of this side
    scale: int = 2  # fidelity against the backbone on the image `scale` times larger
    baselines: list[str] = field(default_factory=lambda: ["bilinear"])  # registered upsamplers to compare with
    figure: bool = True

    def __post_init__(self) -> None:
        require_at_least_one(self, "evaluate", "num_images", "image_size", "scale")
        if self.root is not None and not Path(self.root).is_dir():
            raise ValueError(f"evaluate.root={self.root!r} is not a folder of held-out images")
