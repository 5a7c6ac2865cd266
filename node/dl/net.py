"""The network (torch): a small 3D ResNet on the crop, fused with the radiomic vector and the location one-hot,
hard parameter sharing, one logit per task (ER, PR, HER2).

The image branch is a ResNet-10-style stack of 3D basic blocks (two 3x3x3 convolutions, group norm, identity or
1x1x1 projection shortcut), one block per stage at widths ``(8, 16, 32, 64)``, a stride-2 stem with max pooling
(as ResNet's; a 32^3 crop reaches the stages at 8^3, the last stage keeps 2^3): small enough to train on
two CPU cores. Global average pooling gives the deep feature vector. Each enabled modality passes its
own small projection; the concatenation feeds one shared layer and three task heads. Branches switched off
(the ablations) are not built, and their inputs are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetSpec:
    """Which modalities the network uses and its sizes (recorded in the bundle manifest)."""

    n_channels: int
    n_radiomics: int
    n_location: int
    use_image: bool = True
    use_radiomics: bool = True
    use_location: bool = True
    widths: tuple[int, ...] = (8, 16, 32, 64)
    shared: int = 64
    n_tasks: int = 3
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not (self.use_image or self.use_radiomics or self.use_location):
            raise ValueError("the network needs at least one modality")


def norm(channels: int) -> nn.GroupNorm:
    """Group normalisation (batch-size independent: batch norm's running statistics are unreliable on the few
    batches of a small cohort)."""
    return nn.GroupNorm(min(4, channels), channels)


class BasicBlock3d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + self.shortcut(x))
        return out  # type: ignore[no-any-return]


class ResNet3d(nn.Module):
    def __init__(self, c_in: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(c_in, widths[0], 3, stride=2, padding=1, bias=False),
                                  norm(widths[0]), nn.ReLU(inplace=True), nn.MaxPool3d(2))
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(BasicBlock3d(c, w, 1 if i in (0, len(widths) - 1) else 2))
            c = w
        self.stages = nn.Sequential(*stages)
        self.out_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.stages(self.stem(x)).mean(dim=(2, 3, 4))
        return pooled


class FusionNet(nn.Module):
    """``forward(image, radiomics, location) -> logits (batch, n_tasks)``."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        width = 0
        self.image: ResNet3d | None = None
        self.radiomics: nn.Module | None = None
        self.location: nn.Module | None = None
        if spec.use_image:
            self.image = ResNet3d(spec.n_channels, spec.widths)
            width += self.image.out_features
        if spec.use_radiomics:
            self.radiomics = nn.Sequential(nn.Linear(spec.n_radiomics, 32), nn.ReLU(inplace=True),
                                           nn.Dropout(spec.dropout))
            width += 32
        if spec.use_location:
            self.location = nn.Sequential(nn.Linear(spec.n_location, 8), nn.ReLU(inplace=True))
            width += 8
        self.shared = nn.Sequential(nn.Linear(width, spec.shared), nn.ReLU(inplace=True), nn.Dropout(spec.dropout))
        self.heads = nn.ModuleList([nn.Linear(spec.shared, 1) for _ in range(spec.n_tasks)])

    def forward(self, image: torch.Tensor, radiomics: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.image is not None:
            parts.append(self.image(image))
        if self.radiomics is not None:
            parts.append(self.radiomics(radiomics))
        if self.location is not None:
            parts.append(self.location(location))
        h = self.shared(torch.cat(parts, dim=1))
        return torch.cat([head(h) for head in self.heads], dim=1)
