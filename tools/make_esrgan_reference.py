"""Tiny RRDBNet (Real-ESRGAN's architecture, basicsr's key layout) models with seeded random
weights, and PyTorch's outputs on a seeded input, for the engine's ESRGAN parity test.

    python tools/make_esrgan_reference.py   # needs torch, safetensors (see tools/README.md)

Writes assets/models/tiny-esrgan-x2.safetensors, assets/models/tiny-esrgan-x4.safetensors and
assets/reference/tiny-esrgan.safetensors (input [1,3,16,16] in [0,1], outputs x2 and x4).
The network is basicsr's RRDBNet (BSD-3-Clause), written out here so that no basicsr install
is needed.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat, num_grow_ch):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, scale, num_feat, num_block, num_grow_ch):
        super().__init__()
        self.scale = scale
        num_in_ch = {4: 3, 2: 12, 1: 48}[scale]
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x):
        if self.scale == 2:
            feat = F.pixel_unshuffle(x, 2)
        elif self.scale == 1:
            feat = F.pixel_unshuffle(x, 4)
        else:
            feat = x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def main():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    outputs = {"input": x}
    for scale in (2, 4):
        net = RRDBNet(scale, num_feat=8, num_block=2, num_grow_ch=4).eval()
        weights = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(weights, str(ROOT / f"assets/models/tiny-esrgan-x{scale}.safetensors"))
        with torch.no_grad():
            outputs[f"x{scale}"] = net(x)
    save_file(outputs, str(ROOT / "assets/reference/tiny-esrgan.safetensors"))
    print("wrote tiny-esrgan-x2/x4 and their reference outputs")


if __name__ == "__main__":
    main()
