"""ResNet backbones (torchvision) returning C3–C5.

Weights are never downloaded: ``pretrained`` is a local file (``.safetensors`` or a
``torch.save``d state dict, read with ``weights_only=True``) holding a torchvision ResNet
state dict (``fc.*`` may be present and is dropped).

Normalisation: with pretrained weights BatchNorm is ``FrozenBatchNorm2d`` (ImageNet
statistics kept, as every detection recipe does with small per-GPU batches). Without
them BatchNorm stays trainable: a network trained from scratch (the sample data set)
has no statistics worth freezing, and frozen identity norms make a deep ResNet's
activations drift in scale from layer to layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

RESNETS: dict[str, tuple[str, list[int]]] = {
    # name: (torchvision constructor, channels of C3, C4, C5)
    "resnet18": ("resnet18", [128, 256, 512]),
    "resnet34": ("resnet34", [128, 256, 512]),
    "resnet50": ("resnet50", [512, 1024, 2048]),
    "resnet101": ("resnet101", [512, 1024, 2048]),
}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never executing code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained: backbone weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, wrong format: name the file
        raise ValueError(f"pretrained: cannot read backbone weights {str(path)!r}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"pretrained: {str(path)!r} does not hold a state dict of tensors")
    return state


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier, returning ``[C3, C4, C5]``.

    Args:
        name: one of :data:`RESNETS`.
        pretrained: local path to ResNet weights or ``None`` (random init).
        frozen_stages: 0 freezes nothing; ``k ≥ 1`` freezes the stem and ``layer1..layerk``
            (parameters get no gradient, their norms stay in eval mode).
    """

    def __init__(
        self, name: str = "resnet18", pretrained: str | None = None, frozen_stages: int = 1
    ):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone: unknown {name!r}; choose one of {sorted(RESNETS)}")
        if not 0 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in 0..4, got {frozen_stages}")
        ctor, self.out_channels = RESNETS[name]
        norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
        net = getattr(torchvision.models, ctor)(weights=None, norm_layer=norm)
        if pretrained:
            _load_into(net, pretrained, name)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.frozen_stages = frozen_stages
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train()

    def _frozen_modules(self) -> list[nn.Module]:
        stages = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]
        return stages[: self.frozen_stages + 1] if self.frozen_stages else []

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        # Frozen stages must not update BatchNorm running statistics either.
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(N, 3, H, W)`` normalised images -> C3, C4, C5 at strides 8, 16, 32."""
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


def _load_into(net: nn.Module, path: str, name: str) -> None:
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("fc.")}
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    # FrozenBatchNorm2d has no num_batches_tracked; BatchNorm checkpoints do.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"pretrained: {path!r} does not match backbone {name!r} "
            f"({len(missing)} missing e.g. {missing[:3]}, {len(unexpected)} unexpected "
            f"e.g. {unexpected[:3]}, {len(wrong)} of wrong shape e.g. {wrong[:3]})"
        )
    net.load_state_dict(state, strict=False)
