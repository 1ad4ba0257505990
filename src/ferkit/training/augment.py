"""Batch augmentation on tensors: one affine warp per batch (crop, scale, rotation, flip), photometric jitter,
random erasing, and mixup / cutmix. No per-image Python work per step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ferkit.views import cut


@dataclass
class AugmentConfig:
    flip: bool = True
    scale: float = 0.15  # zoom in/out by up to this fraction
    rotate: float = 12.0  # degrees
    translate: float = 0.1  # fraction of the image
    brightness: float = 0.25  # multiplicative and additive jitter, in 0..255 units scaled by 255
    contrast: float = 0.3
    erase: float = 0.5  # probability of one random erased rectangle
    lowres: float = 0.0  # probability of a low-resolution copy (down to 35-100% of the side and back up): real photos'
    # faces are often small, soft or over-compressed, where FER2013's are sharp 48x48 crops
    mixup: float = 0.0  # Beta(alpha, alpha) for mixup; 0 switches it off
    cutmix: float = 0.0  # Beta(alpha, alpha) for cutmix; 0 switches it off


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, crop: int = 0) -> torch.Tensor:
    """x: N x 1 x H x W float in 0..255 on the generator's device. Returns an augmented batch of the same shape,
    or of random crop x crop windows (cut after the warp, by the same function evaluation and inference use)."""
    n, dev = x.shape[0], x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=dev) * (hi - lo) + lo

    ang = u(-cfg.rotate, cfg.rotate) * math.pi / 180
    s = 1.0 / u(1 - cfg.scale, 1 + cfg.scale)
    sx = s * torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0) if cfg.flip else s
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * s, u(-cfg.translate, cfg.translate) * 2], 1),
            torch.stack([sin * sx, cos * s, u(-cfg.translate, cfg.translate) * 2], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = u(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
    b = (u(-cfg.brightness, cfg.brightness) * 255).view(n, 1, 1, 1)
    x = ((x - mean) * c + mean + b).clamp(0, 255)
    if cfg.erase > 0:
        h, w = x.shape[-2:]
        eh = (u(0.1, 0.4) * h).long().view(n, 1, 1)
        ew = (u(0.1, 0.4) * w).long().view(n, 1, 1)
        y0 = (u(0, 1) * (h - eh.view(n))).long().view(n, 1, 1)
        x0 = (u(0, 1) * (w - ew.view(n))).long().view(n, 1, 1)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        box = (ys >= y0) & (ys < y0 + eh) & (xs >= x0) & (xs < x0 + ew)
        on = (torch.rand(n, generator=gen, device=dev) < cfg.erase).view(n, 1, 1)
        noise = torch.rand(x.shape, generator=gen, device=dev) * 255
        x = torch.where((box & on).unsqueeze(1), noise, x)
    if cfg.lowres > 0:
        h, w = x.shape[-2:]
        f = float(u(0.35, 1.0)[0])  # one factor per batch keeps it one resize; which images: drawn per image
        small = F.interpolate(x, size=(max(int(h * f), 8), max(int(w * f), 8)), mode="bilinear", antialias=True,
                              align_corners=False)
        on = (torch.rand(n, generator=gen, device=dev) < cfg.lowres).view(n, 1, 1, 1)
        x = torch.where(on, F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False), x)
    if crop and crop < x.shape[-1]:
        m = x.shape[-1] - crop + 1
        ys = torch.randint(m, (n,), generator=gen, device=dev)
        xs = torch.randint(m, (n,), generator=gen, device=dev)
        x = cut(x[:, 0], ys, xs, crop).unsqueeze(1)
    return x


def mix(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one per batch, chosen at random when both are on). y: N x C target distributions."""
    modes = [m for m, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a > 0]
    if not modes:
        return x, y
    dev = x.device
    mode = modes[int(torch.randint(len(modes), (1,), generator=gen, device=dev))]
    alpha = cfg.mixup if mode == "mixup" else cfg.cutmix
    # Drawn from the batch generator (torch's Beta sampler takes none), so a resumed run mixes the same way.
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen, device=dev))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    if mode == "mixup":
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    h, w = x.shape[-2:]
    rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = (int(torch.randint(h, (1,), generator=gen, device=dev)), int(torch.randint(w, (1,), generator=gen, device=dev)))
    y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, lam * y + (1 - lam) * y[perm]
