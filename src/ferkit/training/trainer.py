"""The training loop: whole dataset as one uint8 tensor, batch augmentation, EMA, checkpoints that resume exactly.

A run folder holds config.toml, log.jsonl (one line per epoch), curves.png, best.safetensors (+ meta.json),
state.pt (the resumable state of the last finished epoch), model.onnx and metrics.json.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferkit.data import Dataset, load_dataset
from ferkit.errors import FerkitError
from ferkit.models import create_model
from ferkit.models.export import classifier_name, init_from
from ferkit.training.augment import augment, mix
from ferkit.training.config import TrainConfig, to_toml
from ferkit.training.distill import Teacher, compute_teacher, distill_loss, teacher_specs
from ferkit.utils import atomic_write
from ferkit.views import tta_views

log = logging.getLogger("ferkit.train")


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    if cfg.precision == "auto":
        # Without native bf16 (AVX512-BF16 / AMX) autocast is emulated and ten times slower than fp32.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return cfg.precision == "bf16"


class EMA:
    """Exponential moving average of the weights (and a copy of the buffers), evaluated instead of the raw model."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        # Warm up the decay so early averages are not dominated by the random init.
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient, as in the seeds' Keras baseline.
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise FerkitError(f"optimizer {cfg.optimizer!r}: choose sgd, adamw or adam")


def make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup, div_factor=20, final_div_factor=200
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3)
    raise FerkitError(f"schedule {cfg.schedule!r}: choose onecycle, cosine or plateau")


@torch.no_grad()
def predict_proba(
    model: nn.Module, images: np.ndarray, device: torch.device, batch: int = 512, tta: str = "none", crop: int = 0
) -> np.ndarray:
    """Class probabilities for N x S x S uint8 faces, averaged over the TTA views (ferkit.views) of a crop model."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        views = tta_views(images[i : i + batch], tta, crop or None)
        p = sum(F.softmax(model(torch.from_numpy(v).to(device).float().unsqueeze(1)).float(), 1) for v in views)
        out.append((p / len(views)).cpu())
    return torch.cat(out).numpy()


def _metrics(prob: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = prob.argmax(1)
    eps = 1e-7
    loss = float(-np.log(np.clip(prob[np.arange(len(labels)), labels], eps, 1)).mean())
    return {
        "loss": loss,
        "acc": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=list(range(num_classes)), zero_division=0)),
    }


def _targets(ds: Dataset, split: str, cfg: TrainConfig) -> torch.Tensor:
    sp = ds[split]
    n = len(ds.classes)
    if cfg.soft_labels:
        if sp.soft is None:
            raise FerkitError(f"soft_labels: {ds.source} has no vote distributions (only FER+ has them)")
        return torch.from_numpy(sp.soft).float()
    return F.one_hot(torch.from_numpy(sp.labels).long(), n).float()


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = sys.stderr.isatty() if progress is None else progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise FerkitError("--device cuda: no CUDA GPU is available here")
        self.device = torch.device(cfg.device)
        self.bf16 = use_bf16(cfg, self.device)
        self.ds = load_dataset(cfg.data, format=cfg.format, classes=cfg.classes)
        for split in ("train", "val"):
            if split not in self.ds.splits:
                raise FerkitError(f"{cfg.data}: has no {split} split; training needs train and val")
        self.classes = self.ds.classes
        self.input_size = int(self.ds["train"].images.shape[-1])
        if not 0 <= cfg.crop <= self.input_size:
            raise FerkitError(f"crop: {cfg.crop} must lie between 0 (whole face) and the face size {self.input_size}")
        self.crop = cfg.crop or self.input_size
        kw = {} if cfg.dropout is None else {"dropout": cfg.dropout}
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, len(self.classes), **kw)
        if cfg.init:
            new = init_from(self.model, cfg.init, self.classes)
            log.info("starting from %s%s", cfg.init, f"; new classes: {', '.join(new)}" if new else "")
        if cfg.freeze:
            if not cfg.init:
                raise FerkitError("freeze: only the output layer would learn on a random body; set init as well")
            head = classifier_name(self.model) + "."
            for name, p in self.model.named_parameters():
                p.requires_grad = name.startswith(head)
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The dataset lives on the training device once; batches are cut and augmented there.
        self.x_train = torch.from_numpy(self.ds["train"].images).to(self.device)
        self.y_train = _targets(self.ds, "train", cfg).to(self.device)
        self.teacher = self._teacher() if cfg.teacher else None
        self.steps_per_epoch = math.ceil(len(self.x_train) / cfg.batch_size)
        self.opt = make_optimizer(cfg, self.model)
        self.sched = make_schedule(cfg, self.opt, self.steps_per_epoch)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        counts = np.bincount(self.ds["train"].labels, minlength=len(self.classes)).astype(np.float64)
        self.class_weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32,
                                          device=self.device)
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.last_row: dict[str, Any] | None = None
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load_state()
        else:
            (self.out / "log.jsonl").unlink(missing_ok=True)
        atomic_write(self.out / "config.toml", lambda p: Path(p).write_text(to_toml(cfg)))

    def _teacher(self) -> Teacher:
        cfg = self.cfg
        if cfg.augment.mixup or cfg.augment.cutmix:
            raise FerkitError("teacher: mixup and cutmix can't be used with distillation (the views are stored)")
        if not 0 <= cfg.distill_alpha <= 1 or cfg.distill_temperature <= 0 or cfg.teacher_views < 1:
            raise FerkitError("distill_alpha must lie in 0..1, distill_temperature be > 0 and teacher_views >= 1")
        specs = teacher_specs(cfg.teacher)
        if len(specs) == 1 and specs[0].endswith(".npz"):
            path = Path(specs[0])
        else:
            path = compute_teacher(specs, self.ds["train"].images, self.ds["train"].labels, self.classes, cfg.augment,
                                   self.crop, cfg.teacher_views, cfg.seed, self.device, self.out / "teacher.npz")
        return Teacher(path, self.classes, len(self.x_train), self.crop, cfg.distill_temperature, self.device,
                       cfg.augment.flip)

    # -- state -------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "ema": None if self.ema is None else {"shadow": self.ema.shadow, "steps": self.ema.steps},
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "row": self.last_row,
        }

    def _load_state(self) -> None:
        path = self.out / "state.pt"
        if not path.exists():
            raise FerkitError(f"--resume: {path} not found; nothing to resume")
        # weights_only: the resumable state holds tensors and plain values only, nothing to unpickle.
        try:
            st = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["opt"])
            self.sched.load_state_dict(st["sched"])
        except Exception as e:  # truncated, foreign or tampered: torch raises many types, none of them a user error
            raise FerkitError(f"--resume: {path} is not a resumable state of this run ({str(e).splitlines()[0][:160]})"
                              ) from None
        total = self.cfg.epochs * self.steps_per_epoch
        if self.cfg.schedule == "onecycle" and self.sched.total_steps != total:
            # The run was resumed with another length: continue the same one-cycle curve stretched to it.
            log.warning("resuming with %d epochs instead of %d: the schedule is re-planned from here",
                        self.cfg.epochs, self.sched.total_steps // self.steps_per_epoch)
            done = st["epoch"] * self.steps_per_epoch
            self.sched = make_schedule(self.cfg, self.opt, self.steps_per_epoch)
            self.sched.last_epoch = done - 1
            self.sched.step()
        if self.ema is not None and st["ema"] is not None:
            self.ema.shadow, self.ema.steps = st["ema"]["shadow"], st["ema"]["steps"]
        self.gen.set_state(st["gen"].cpu())
        torch.set_rng_state(st["torch_rng"])
        self.epoch, self.best, self.best_epoch = st["epoch"], st["best"], st["best_epoch"]
        # Rows of epochs after the checkpoint (a kill between the log and the save) are trained again.
        logf = self.out / "log.jsonl"
        if logf.exists():
            rows = [r for r in logf.read_text().splitlines() if r.strip() and json.loads(r)["epoch"] <= self.epoch]
        else:
            rows = []
        # ...and the row of the checkpoint's own epoch comes back if a kill fell between the save and the log.
        if st.get("row") and (not rows or json.loads(rows[-1])["epoch"] < self.epoch):
            rows.append(json.dumps(st["row"]))
        atomic_write(logf, lambda p: Path(p).write_text("".join(r + "\n" for r in rows)))
        log.info("resumed %s at epoch %d", self.out, self.epoch)

    def eval_model(self) -> nn.Module:
        if self.ema is None:
            return self.model
        m = create_model(self.cfg.model, len(self.classes)).to(self.device)
        m.load_state_dict(self.ema.shadow)
        return m

    # -- loop --------------------------------------------------------------------------------------------------
    def _order(self) -> torch.Tensor:
        n = len(self.x_train)
        if self.cfg.balance == "sampler":
            labels = torch.from_numpy(self.ds["train"].labels).to(self.device)
            w = self.class_weights[labels]
            return torch.multinomial(w, n, replacement=True, generator=self.gen)
        return torch.randperm(n, generator=self.gen, device=self.device)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Each image is weighted by its own (possibly soft) label, before smoothing: weighting the smoothed
        # target per class would push every image towards the rare classes.
        weight = target @ self.class_weights if self.cfg.balance == "weights" else 1.0
        ls = self.cfg.label_smoothing
        if ls:
            target = target * (1 - ls) + ls / target.shape[1]
        return (-(target * F.log_softmax(logits.float(), 1)).sum(1) * weight).mean()

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        if self.cfg.freeze:
            # A frozen body keeps the normalisation statistics it was trained with.
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = self._order()
        total, correct, loss_sum, t0 = 0, 0, 0.0, time.time()
        bar = _Bar(self.steps_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.epochs}", self.progress)
        for step in range(self.steps_per_epoch):
            idx = order[step * self.cfg.batch_size : (step + 1) * self.cfg.batch_size]
            y = self.y_train[idx]
            if self.teacher is not None:
                x, soft = self.teacher.batch(idx, self.gen)
            else:
                x = augment(self.x_train[idx].float().unsqueeze(1), self.cfg.augment, self.gen, self.cfg.crop)
                x, y = mix(x, y, self.cfg.augment, self.gen)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(x)
            loss = self._loss(logits, y)
            if self.teacher is not None:
                a = self.cfg.distill_alpha
                loss = (1 - a) * loss + a * distill_loss(logits, soft, self.cfg.distill_temperature)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            if self.cfg.schedule != "plateau":
                self.sched.step()
            if self.ema is not None:
                self.ema.update(self.model)
            total += len(idx)
            correct += int((logits.argmax(1) == y.argmax(1)).sum())
            loss_sum += loss.item() * len(idx)
            bar.update(step + 1, total / (time.time() - t0))
        bar.close()
        return {"train_loss": loss_sum / total, "train_acc": correct / total, "images_per_s": total / (time.time() - t0)}

    def validate(self) -> dict[str, float]:
        val = self.ds["val"]
        prob = predict_proba(self.eval_model(), val.images, self.device, crop=self.crop)
        return {f"val_{k}": v for k, v in _metrics(prob, val.labels, len(self.classes)).items()}

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.cfg.select_metric == "val_loss" else value > self.best

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        log.info(
            "training %s on %s: %d images, %d classes, %s, %d epochs",
            cfg.model, cfg.data, len(self.x_train), len(self.classes), "bf16" if self.bf16 else "fp32", cfg.epochs,
        )
        stale = self.epoch - self.best_epoch
        while self.epoch < cfg.epochs:
            t0 = time.time()
            row = self.train_epoch()
            row.update(self.validate())
            self.epoch += 1
            if cfg.schedule == "plateau":
                self.sched.step(row["val_acc"])
            row = {"epoch": self.epoch, **row, "lr": self.opt.param_groups[0]["lr"], "seconds": time.time() - t0}
            metric = row[cfg.select_metric]
            if self._better(metric):
                self.best, self.best_epoch, stale = metric, self.epoch, 0
                self.save_weights(self.out / "best.safetensors")
            else:
                stale += 1
            # The log row follows its checkpoint: a resume drops rows newer than the state it restarts from.
            self.last_row = row
            atomic_write(self.out / "state.pt", lambda p: torch.save(self._state(), p))
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            log.info(
                "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f macro-F1 %.4f  %.0f img/s  %.0fs",
                self.epoch, cfg.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                row["val_macro_f1"], row["images_per_s"], row["seconds"],
            )
            if cfg.patience and stale >= cfg.patience:
                log.info("early stop: no better %s for %d epochs", cfg.select_metric, stale)
                break
        return {"best_epoch": self.best_epoch, cfg.select_metric: self.best, "epochs_run": self.epoch}

    def save_weights(self, path: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in self.eval_model().state_dict().items()}
        meta = {
            "arch": self.cfg.model,
            "classes": json.dumps(self.classes),
            "input_size": str(self.input_size),
            "crop": str(self.crop),
            "epoch": str(self.epoch),
        }
        atomic_write(path, lambda p: save_file(state, p, metadata=meta))


class _Bar:
    """A rich progress bar (rate and ETA) on a terminal; a plain log line every 10% otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self.next_log = total, desc, enabled, 0.1
        self.t0 = time.time()
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rate]:.0f} img/s"),
                TimeRemainingColumn(), transient=True,
            )
            self.p.start()
            self.task = self.p.add_task(desc, total=total, rate=0.0)

    def update(self, done: int, rate: float) -> None:
        if self.enabled:
            self.p.update(self.task, completed=done, rate=rate)
        elif done / self.total >= self.next_log:
            eta = (time.time() - self.t0) / done * (self.total - done)
            log.info("%s  %3.0f%%  %.0f img/s  ETA %.0fs", self.desc, 100 * done / self.total, rate, eta)
            self.next_log += 0.1

    def close(self) -> None:
        if self.enabled:
            self.p.stop()


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train, keep the best checkpoint by validation, then export it to ONNX and write metrics.json."""
    trainer = Trainer(cfg, resume=resume)
    summary = trainer.fit()
    from ferkit.training.finish import finish_run

    return finish_run(trainer.out, summary)
