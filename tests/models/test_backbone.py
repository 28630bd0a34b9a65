"""Backbone (local weights only, freezing, norms) and FPN shapes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from hcral.models.backbone import ResNetBackbone
from hcral.models.fpn import FPN


def test_resnet18_returns_c3_c5(device):
    net = ResNetBackbone("resnet18", frozen_stages=0).to(device)
    feats = net(torch.randn(2, 3, 64, 96, device=device))
    assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
    assert net.out_channels == [128, 256, 512]


def test_frozen_stages_freeze_stem_and_layers_and_their_norm_statistics():
    net = ResNetBackbone("resnet18", frozen_stages=2)
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.layer2.parameters())
    assert all(p.requires_grad for p in net.layer3.parameters())
    net.train()
    assert not net.layer1.training and not net.stem[1].training and net.layer3.training
    before = net.layer1[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(net.layer1[0].bn1.running_mean, before)


def test_norms_trainable_from_scratch_frozen_with_weights(tmp_path):
    scratch = ResNetBackbone("resnet18", frozen_stages=0)
    assert isinstance(scratch.stem[1], nn.BatchNorm2d) and scratch.stem[1].weight.requires_grad
    path = tmp_path / "r18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    assert isinstance(ResNetBackbone("resnet18", str(path), 0).stem[1], FrozenBatchNorm2d)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_are_loaded(tmp_path, suffix):
    ref = torchvision.models.resnet18()
    with torch.no_grad():
        ref.bn1.running_mean.uniform_()  # non-default statistics must survive the load
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file(ref.state_dict(), str(path))
    else:
        torch.save(ref.state_dict(), path)
    net = ResNetBackbone("resnet18", str(path), frozen_stages=0)
    torch.testing.assert_close(net.stem[0].weight, ref.conv1.weight)
    torch.testing.assert_close(net.stem[1].running_mean, ref.bn1.running_mean)
    torch.testing.assert_close(net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_mismatched_weights_name_the_file(tmp_path):
    path = tmp_path / "r34.safetensors"
    save_file(torchvision.models.resnet34().state_dict(), str(path))
    with pytest.raises(ValueError, match="r34.safetensors.*unexpected"):
        ResNetBackbone("resnet18", str(path))


def test_missing_or_unreadable_weights_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="nowhere.pth.*does not exist"):
        ResNetBackbone("resnet18", str(tmp_path / "nowhere.pth"))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        ResNetBackbone("resnet18", str(bad))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="resnet7"):
        ResNetBackbone("resnet7")
    with pytest.raises(ValueError, match="frozen_stages"):
        ResNetBackbone("resnet18", frozen_stages=5)


def test_fpn_levels_strides_and_channels(device):
    c3, c4, c5 = (
        torch.randn(1, c, 128 // s, 128 // s, device=device)
        for c, s in ((128, 8), (256, 16), (512, 32))
    )
    fpn = FPN([128, 256, 512], 32).to(device)
    out = fpn([c3, c4, c5])
    assert [tuple(p.shape) for p in out] == [(1, 32, 128 // s, 128 // s) for s in fpn.strides]
    assert fpn.strides == [8, 16, 32, 64, 128]
