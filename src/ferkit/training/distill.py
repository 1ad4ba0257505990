"""Distillation targets: the teachers' probabilities on a fixed set of augmented views of every training image.

They are computed once (teacher.npz in the run folder, or a file another run wrote) so the student's training needs
no teacher forward pass: each step picks one stored view per image, mirrors it at random (the teachers' probabilities
average each view and its mirror), and learns from the label and from the teachers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ferkit.errors import FerkitError
from ferkit.models.export import load_weights
from ferkit.training.augment import AugmentConfig, augment
from ferkit.utils import atomic_write

log = logging.getLogger("ferkit.train")

FORMAT = "ferkit-teacher-1"


def teacher_specs(teacher: list[str] | str) -> list[str]:
    items = [teacher] if isinstance(teacher, str) else list(teacher)
    return [s.strip() for item in items for s in str(item).split(",") if s.strip()]


def _weights_path(spec: str) -> Path:
    p = Path(spec)
    if p.is_dir():
        p = p / "best.safetensors"
    if not p.is_file():
        raise FerkitError(f"teacher {spec}: no such run folder or safetensors file")
    return p


def _fingerprint(paths: list[Path], images: np.ndarray, labels: np.ndarray, extra: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_teacher(
    specs: list[str], images: np.ndarray, labels: np.ndarray, classes: list[str], aug: AugmentConfig, crop: int,
    views: int, seed: int, device: torch.device, out: Path, batch: int = 512, bf16: bool = False,
) -> Path:
    """Write `out` (npz): `views` N x K x crop x crop uint8 and `probs` N x K x C (teachers' mean, mirror-averaged).

    An existing file made from the same teachers, data and settings is kept (a resumed run does not redo it).
    bf16: the teachers run under bf16 autocast (the student's precision: on CPUs with native bf16 it is several times
    faster than fp32, and 8 views of FER2013 through two teachers are a million forward passes).
    """
    paths = [_weights_path(s) for s in specs]
    extra = {"views": views, "seed": seed, "crop": crop, "augment": vars(aug), "classes": classes, "bf16": bf16}
    fp = _fingerprint(paths, images, labels, extra)
    if out.is_file():
        with np.load(out, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fp:
                return out
    teachers = []
    for p in paths:
        model, info = load_weights(p)
        missing = [c for c in classes if c not in info["classes"]]
        if missing:
            raise FerkitError(f"teacher {p}: has no class {', '.join(missing)}; its classes: {', '.join(info['classes'])}")
        order = torch.tensor([info["classes"].index(c) for c in classes], device=device)
        if info["crop"] > crop:
            log.warning("teacher %s was trained on %d-pixel crops; the student's views are %d", p, info["crop"], crop)
        # A teacher trained on smaller crops sees the centre crop of each view, as its own inference would.
        tc = min(info["crop"], crop)
        teachers.append((model.to(device, memory_format=torch.channels_last).eval(), order, (crop - tc) // 2, tc))
    n = len(images)
    out_views = np.zeros((n, views, crop, crop), np.uint8)
    out_probs = np.zeros((n, views, len(classes)), np.float16)
    t0 = time.time()
    for k in range(views):
        gen = torch.Generator(device=device).manual_seed(seed * 1000 + k)
        for i in range(0, n, batch):
            x = torch.from_numpy(images[i : i + batch]).to(device).float().unsqueeze(1)
            # The stored views are the uint8 pixels the student will see; the teachers see the same ones (see above).
            v = augment(x, aug, gen, crop).round().clamp(0, 255)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                p = sum(_mirror_avg(m, v[..., o : o + tc, o : o + tc], aug.flip)[:, order]
                        for m, order, o, tc in teachers) / len(teachers)
            out_views[i : i + batch, k] = v[:, 0].to(torch.uint8).cpu().numpy()
            out_probs[i : i + batch, k] = p.float().cpu().numpy()
        log.info("teacher views %d/%d  %.0fs", k + 1, views, time.time() - t0)
    acc = float((out_probs.mean(1).argmax(1) == labels).mean())
    log.info("teachers' training accuracy on their views: %.4f", acc)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, views=out_views, probs=out_probs, classes=np.array(classes), fingerprint=np.array(fp),
                     format=np.array(FORMAT))

    atomic_write(out, write)
    return out


def _mirror_avg(model: torch.nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    x = x.contiguous(memory_format=torch.channels_last)
    p = F.softmax(model(x).float(), 1)
    return (p + F.softmax(model(x.flip(3)).float(), 1)) / 2 if flip else p


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's shape and dtype in an .npz, read from the .npy headers alone: nothing is inflated yet."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist()[:16]:
                with z.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f, max_header_size=10_000)
                out[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FerkitError(f"teacher {path}: not a ferkit teacher file ({str(e)[:120]})") from None
    return out


MAX_TEACHER_VIEWS = 64


class Teacher:
    """Stored views and softened teacher probabilities, on the training device."""

    def __init__(self, path: Path, classes: list[str], n: int, crop: int, temperature: float, device: torch.device,
                 flip: bool = True):
        # Shapes and types checked from the headers before any array is read: a file made for another run, or one
        # whose arrays would inflate to gigabytes, is refused without allocating them.
        heads = _npz_headers(path)
        want = {"views": (4, np.uint8), "probs": (3, None), "classes": (1, None)}
        for key, (ndim, dtype) in want.items():
            if key not in heads or len(heads[key][0]) != ndim or (dtype is not None and heads[key][1] != dtype):
                raise FerkitError(f"teacher {path}: not a ferkit teacher file (array {key!r} missing or of the wrong "
                                  "shape or type)")
        vshape, pshape = heads["views"][0], heads["probs"][0]
        if (vshape[0] != n or vshape[2:] != (crop, crop) or not 1 <= vshape[1] <= MAX_TEACHER_VIEWS
                or pshape != (n, vshape[1], len(classes)) or heads["probs"][1].kind != "f"
                or heads["classes"][0] != (len(classes),)):
            raise FerkitError(f"teacher {path}: made for views {vshape} and probabilities {pshape}; this run needs "
                              f"({n}, 1..{MAX_TEACHER_VIEWS}, {crop}, {crop}) and ({n}, views, {len(classes)})")
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != FORMAT:
                    raise ValueError("not a ferkit teacher file")
                own = [str(c) for c in z["classes"]]
                views, probs = z["views"], z["probs"].astype(np.float32)
        except (OSError, ValueError, KeyError) as e:
            raise FerkitError(f"teacher {path}: not a ferkit teacher file ({e})") from None
        if own != classes or views.shape[0] != n or views.shape[2:] != (crop, crop):
            raise FerkitError(f"teacher {path}: made for {views.shape[0]} images of {views.shape[2]} px with classes "
                              f"{', '.join(own)}; this run has {n} images of {crop} px with {', '.join(classes)}")
        self.views = torch.from_numpy(views).to(device)
        # Softened targets: softmax(log p / T), the teachers' logits up to a constant divided by T.
        z = torch.from_numpy(np.log(np.clip(probs, 1e-8, 1.0))) / temperature
        self.probs = torch.softmax(z, -1).to(device)
        self.k = views.shape[1]
        self.flip = flip

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One stored view per image, mirrored at random (if flips are on): N x 1 x crop x crop pixels, N x C targets."""
        v = torch.randint(self.k, (len(idx),), generator=gen, device=idx.device)
        x = self.views[idx, v].float().unsqueeze(1)
        if self.flip:
            flip = torch.rand(len(idx), generator=gen, device=idx.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x, self.probs[idx, v]


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(teachers || student at temperature T) (Hinton et al.): gradients keep their scale as T changes."""
    logp = F.log_softmax(logits.float() / temperature, 1)
    return temperature**2 * (soft * (soft.clamp_min(1e-8).log() - logp)).sum(1).mean()
