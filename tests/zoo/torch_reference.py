"""An independent PyTorch ResNet-50/101 with GroupNorm, written from the
torchvision/timm definition (stride on the 3x3 conv, projection shortcut in
each stage's first block, symmetric padding), with timm's parameter names,
and writers of its weights in the three public formats. Test-only: needs
torch."""

import pickle

import numpy as np
import torch
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, inplanes, width, stride, downsample):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.GroupNorm(32, width, eps=1e-5)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(32, width, eps=1e-5)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.GroupNorm(32, out, eps=1e-5)
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.GroupNorm(32, out, eps=1e-5))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + shortcut)


class ResNetGN(nn.Module):
    def __init__(self, stage_blocks=(3, 4, 6, 3), classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.GroupNorm(32, 64, eps=1e-5)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for stage, (blocks, width) in enumerate(zip(stage_blocks, (64, 128, 256, 512))):
            layers = []
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(Bottleneck(inplanes, width, stride, downsample=block == 0))
                inplanes = width * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def random_model(stage_blocks=(3, 4, 6, 3), seed=0):
    """A reference model with every parameter random (GN scales included)."""
    torch.manual_seed(seed)
    model = ResNetGN(stage_blocks).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "fc" not in name:  # GN gamma/beta around 1/0
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
    return model


def logits(model, images_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


def state_arrays(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _renamed(state, block_name, stem, classifier, conv_layout):
    """State dict in timm names -> another source's names and layouts."""
    out = {}

    def put(names, conv, gamma, beta):
        out[names[0]] = conv.transpose(2, 3, 1, 0) if conv_layout == "HWIO" else conv
        out[names[1]], out[names[2]] = gamma, beta

    put(stem, state["conv1.weight"], state["bn1.weight"], state["bn1.bias"])
    for key in state:
        parts = key.split(".")
        if not key.startswith("layer") or not key.endswith(".weight") or state[key].ndim != 4:
            continue
        stage, block = int(parts[0][5:]) - 1, int(parts[1])
        if parts[2] == "downsample":
            k, norm = 0, f"layer{stage + 1}.{block}.downsample.1"
        else:
            k, norm = int(parts[2][4:]), f"layer{stage + 1}.{block}.bn{parts[2][4:]}"
        put(block_name(stage, block, k), state[key], state[f"{norm}.weight"], state[f"{norm}.bias"])
    kernel, bias = classifier
    out[kernel] = state["fc.weight"] if conv_layout == "OIHW" else state["fc.weight"].T
    out[bias] = state["fc.bias"]
    return out


def write_timm(model, path):
    torch.save(model.state_dict(), path)


def write_detectron(model, path):
    from zoo.convert import NAMINGS

    n = NAMINGS["detectron"]
    blobs = _renamed(state_arrays(model), n.block, n.stem, n.classifier, "OIHW")
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)  # Detectron files may carry these
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)


def write_tensorpack(model, path):
    from zoo.convert import NAMINGS

    n = NAMINGS["tensorpack"]
    arrays = _renamed(state_arrays(model), n.block, n.stem, n.classifier, "HWIO")
    # Some tensorpack files keep TF's ":0" suffix, some do not.
    arrays = {(k + ":0" if i % 2 else k): v for i, (k, v) in enumerate(sorted(arrays.items()))}
    np.savez_compressed(path, **arrays)


WRITERS = {"timm": write_timm, "detectron": write_detectron, "tensorpack": write_tensorpack}
