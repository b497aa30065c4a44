"""The paper's models in PyTorch, written from REFERENCE.md, for parity checks and benchmarks.

Needs the optional ``torch`` extra. Module names follow the usual PyTorch CIFAR code
(``conv1``, ``layer1.0.conv1``, ``shortcut.0``, ``linear``; ``blocks.11.attn.out_proj``), and
``prunelora_keras.interop.torch`` maps them to the Keras layer names.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * 4:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes * 4, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
        self.in_planes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1 = self._make_layer(block, planes[0], num_blocks[0], 1)
        self.layer2 = self._make_layer(block, planes[1], num_blocks[1], 2)
        self.layer3 = self._make_layer(block, planes[2], num_blocks[2], 2)
        self.layer4 = self._make_layer(block, planes[3], num_blocks[3], 2)
        self.linear = nn.Linear(planes[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = out.mean(dim=(2, 3))  # = the 4x4 average pool at 32x32, global at any size
        return self.linear(out)


def resnet50(num_classes=10, width=1.0):
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)


def resnet18(num_classes=10, width=1.0):
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


def posemb_sincos_2d(h, w, dim, temperature=10_000.0):
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    omega = 1.0 / temperature ** (np.arange(dim // 4) / max(dim // 4 - 1, 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return torch.tensor(np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1), dtype=torch.float32)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x):
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class SimpleViT(nn.Module):
    def __init__(self, num_classes=10, image_size=32, patch_size=4, dim=384, depth=12, heads=6, mlp_dim=1536):
        super().__init__()
        grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.register_buffer("posemb", posemb_sincos_2d(grid, grid, dim), persistent=False)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.final_ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.posemb
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_ln(x.mean(dim=1)))


class AirbenchGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(channels_out, eps=1e-12, momentum=0.4)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False)
        self.norm2 = nn.BatchNorm2d(channels_out, eps=1e-12, momentum=0.4)
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad = False
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Airbench(nn.Module):
    """airbench94's network (as ``models.airbench``): whitening conv, three groups, max-pool, head / 9."""

    def __init__(self, num_classes: int = 10, widths=(64, 256, 256), channels: int = 3):
        super().__init__()
        self.whiten = nn.Conv2d(channels, 2 * channels * 4, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        ins = (2 * channels * 4, *widths[:-1])
        self.group1, self.group2, self.group3 = (AirbenchGroup(i, o) for i, o in zip(ins, widths))
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, x):
        x = nn.functional.gelu(self.whiten(x))
        x = self.pool(self.group3(self.group2(self.group1(x))))
        return self.head(x.flatten(1)) / 9


def build_torch_model(model_cfg, num_classes: int, image_size: int) -> nn.Module:
    if model_cfg.name == "resnet50":
        return resnet50(num_classes, model_cfg.width)
    if model_cfg.name == "resnet18":
        return resnet18(num_classes, model_cfg.width)
    if model_cfg.name == "airbench":
        return Airbench(num_classes, tuple(model_cfg.widths))
    if model_cfg.name == "vit":
        return SimpleViT(num_classes, image_size, model_cfg.patch_size, model_cfg.dim, model_cfg.depth,
                         model_cfg.heads, model_cfg.mlp_dim)
    raise ValueError(f"unknown model {model_cfg.name!r}")


__all__ = ["Airbench", "build_torch_model", "resnet50", "resnet18", "SimpleViT", "math"]
