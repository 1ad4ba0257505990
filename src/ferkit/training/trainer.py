"""The training loop: whole dataset as one uint8 tensor, batch augmentation, EMA, checkpoints that resume exactly.

The run folder's files are ferkit.runs'. Progress goes to a `ProgressFn` callback (drawn by the caller: the command
line's ferkit.cli.progress), per-epoch summaries to the "ferkit.train" logger, and an `on_epoch(epoch, row)` callback
sees every finished epoch (tuning prunes trials through it).

Launched by torchrun (WORLD_SIZE > 1) the same loop trains data-parallel with PyTorch's DistributedDataParallel:
every process holds the whole dataset, takes its share of each global batch of the epoch's shared permutation, and
only rank 0 writes the run folder (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from ferkit import runs
from ferkit.data import Dataset, load_dataset
from ferkit.data.classes import matched_note, parse_map
from ferkit.data.split import carve_val
from ferkit.errors import FerkitError
from ferkit.models import create_model
from ferkit.models.export import classifier_name, init_from
from ferkit.scoring import validation_metrics
from ferkit.training.augment import augment, mix
from ferkit.training.config import TrainConfig, absolute_paths, to_toml, validate
from ferkit.training.distill import Teacher, compute_teacher, distill_loss, teacher_specs
from ferkit.training.finish import finish_run
from ferkit.utils import ProgressFn, assets_dir, atomic_write
from ferkit.views import tta_views

log = logging.getLogger("ferkit.train")


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """False in torchrun's processes other than rank 0, which print and write nothing."""
    return dist_env()[0] == 0


def _seed(*parts: int) -> int:
    # Independent streams for (seed, epoch, ...) tuples, where seed + epoch would make neighbouring runs overlap.
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


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


def _blocks(model: nn.Module) -> dict[str, int]:
    """Each parameter's block below the output layer (`features.3.conv.weight` -> 3, counting from the input in
    the order parameters are declared); the output layer's parameters are left out."""
    head = classifier_name(model) + "."
    blocks: dict[str, int] = {}
    out: dict[str, int] = {}
    for n, _ in model.named_parameters():
        if not n.startswith(head):
            out[n] = blocks.setdefault(".".join(n.split(".")[:2]), len(blocks))
    return out


def _lr_scales(cfg: TrainConfig, model: nn.Module) -> dict[str, float]:
    """Each parameter's share of lr: 1 for the output layer; backbone_lr x layer_decay^k for the others, k counting
    blocks down from the top one."""
    blocks = _blocks(model)
    top = max(blocks.values(), default=0)
    return {n: cfg.backbone_lr * cfg.layer_decay ** (top - blocks[n]) if n in blocks else 1.0
            for n, _ in model.named_parameters()}


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights, not on biases and norms; with backbone_lr or layer_decay set, one group per lr."""
    uniform = cfg.backbone_lr == 1.0 and cfg.layer_decay == 1.0
    scales = {} if uniform else _lr_scales(cfg, model)
    frozen = {n for n, b in _blocks(model).items() if b < cfg.freeze_blocks} if cfg.freeze_blocks else set()
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        # Parameters frozen only for the warm-up (freeze_epochs) join the optimiser now, to learn later.
        if name in frozen or not (p.requires_grad or cfg.freeze_epochs):
            continue
        groups.setdefault((p.ndim > 1, scales.get(name, 1.0)), []).append(p)
    order = sorted(groups, key=lambda k: (-k[1], not k[0]))
    params = [{"params": groups[k], "weight_decay": cfg.weight_decay if k[0] else 0.0, "lr_scale": k[1],
               "lr": cfg.lr * k[1]} for k in order]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr)
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient, as in the seeds' Keras baseline.
        return torch.optim.Adam(params, lr=cfg.lr)
    raise FerkitError(f"optimizer {cfg.optimizer!r}: choose sgd, adamw or adam")


def make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int, done: int = 0) -> Any:
    """done: steps already taken (a resumed run whose length changed picks the new curve up there)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[cfg.lr * g.get("lr_scale", 1.0) for g in opt.param_groups], total_steps=total, pct_start=cfg.warmup, div_factor=20, final_div_factor=200,
            last_epoch=done - 1,
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


def _targets(ds: Dataset, split: str, cfg: TrainConfig) -> torch.Tensor:
    sp = ds[split]
    n = len(ds.classes)
    if cfg.soft_labels:
        if sp.soft is None:
            raise FerkitError(f"soft_labels: {ds.source} has no vote distributions (only FER+ has them)")
        return torch.from_numpy(sp.soft).float()
    return F.one_hot(torch.from_numpy(sp.labels).long(), n).float()


EpochFn = Callable[[int, dict[str, Any]], None]


def default_run_name(cfg: TrainConfig) -> str:
    """What a run is, for its folder (and so its exported model's name): `vgg_s-course`, `vgg_s-ft-default-course`
    for a fine-tune of the shipped model."""
    def name(p: str) -> str:
        path = Path(p)
        stem = path.parent.name if path.name in (runs.WEIGHTS, "") else path.name.removesuffix(".zip")
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.removesuffix(".safetensors"))[:40] or "data"

    init = f"-ft-{name(cfg.init)}" if cfg.init else ""
    return f"{cfg.model}{init}-{name(cfg.data or 'data')}"


def _check(cfg: TrainConfig, resume: bool) -> None:
    validate(cfg)  # a config built in code gets the same checks as one read from a file
    if cfg.data is None:
        raise FerkitError("no dataset to train on: pass --data PATH (any dataset `ferkit data info` reads, e.g. "
                          "fer2013.zip or a folder of class folders), or set data in the config")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise FerkitError("--device cuda: no CUDA GPU is available here")
    if resume and cfg.out is None:
        raise FerkitError("--resume needs the run folder: --out RUN")


def _class_weights(labels: np.ndarray, n: int) -> torch.Tensor:
    """Each class's weight, inverse to its share of the training images (balance = weights or sampler)."""
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


class Trainer:
    """One run: `Trainer(cfg).fit()`; `train(cfg)` also finishes the run folder (curves, ONNX, metrics.json).

    resume: continue the run in cfg.out from its last finished epoch. exist_ok: train into a folder that is not
    empty (the old run's files are removed); without either, such a folder is refused. cfg.out None: a new
    numbered folder, runs/train, runs/train2, ... (the trainer's `out`; cfg is left as it is). progress: called as
    training goes (rank 0 only). on_epoch: called with (epoch, log row) after each epoch is saved; it may raise to
    stop the run (tuning's pruning does). on_out: called with the run folder as soon as it is claimed, so that a
    caller knows where an interrupted run is kept.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: ProgressFn | None = None,
                 exist_ok: bool = False, on_epoch: EpochFn | None = None,
                 on_out: Callable[[Path], None] | None = None):
        _check(cfg, resume)
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.rank, self.world, local_rank = dist_env()
        if self.world > 1:
            self._join_process_group(local_rank)
        self.progress = progress if self.rank == 0 else None
        self.on_epoch = on_epoch
        self.out = self._claim_out(resume, exist_ok)
        if on_out is not None:
            on_out(self.out)
        self._set_threads()
        self.bf16 = use_bf16(cfg, self.device)
        self.ds, self.val_source = self._load_data(local_rank)
        self.classes = self.ds.classes
        self.input_size = int(self.ds["train"].images.shape[-1])
        self.crop = self._crop()
        self.model = self._build_model()
        self.net = self._data_parallel()
        # Without SyncBN each process's BatchNorm statistics follow its own share: averaged after every step.
        self.sync_buffers = self.world > 1 and not cfg.sync_bn and not cfg.freeze and any(
            b.dtype.is_floating_point for b in self.model.buffers())
        # The dataset lives on the training device once; batches are cut and augmented there.
        self.x_train = torch.from_numpy(self.ds["train"].images).to(self.device)
        self.y_train = _targets(self.ds, "train", cfg).to(self.device)
        self.teacher = self._teacher() if cfg.teacher else None
        self.steps_per_epoch = self._steps_per_epoch()
        self.opt = make_optimizer(cfg, self.model)
        self.sched = make_schedule(cfg, self.opt, self.steps_per_epoch)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        # Augmentation, mixing and teacher views: one generator per process (seed + rank), saved in the checkpoint.
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + self.rank)
        self.class_weights = _class_weights(self.ds["train"].labels, len(self.classes)).to(self.device)
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.start: float | None = None  # a fine-tune's starting score (epoch 0)
        self.last_row: dict[str, Any] | None = None
        if resume:
            self._load_state()
        if self.rank == 0:
            self._record_run()

    # -- set-up, in the order __init__ takes the steps ---------------------------------------------------------
    def _join_process_group(self, local_rank: int) -> None:
        if not dist.is_available():
            raise FerkitError("torchrun: this PyTorch build has no torch.distributed")
        if self.device.type == "cuda":
            # One GPU per process, by its rank on the node.
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.cfg.batch_size % self.world:
            raise FerkitError(f"batch_size: {self.cfg.batch_size} does not split evenly over {self.world} processes; "
                              f"the global batch is shared out, so choose a multiple of {self.world}")

    def _claim_out(self, resume: bool, exist_ok: bool) -> Path:
        """Rank 0 decides the run folder (numbered when not given, refused when it holds another run) and tells the
        others: they must not race it to the next free number."""
        def claim() -> str:
            if self.cfg.out is None:
                return str(runs.new_run_dir(Path("runs") / default_run_name(self.cfg)))
            runs.check_out(self.cfg.out, resume, exist_ok)
            Path(self.cfg.out).mkdir(parents=True, exist_ok=True)
            return self.cfg.out

        return Path(self._from_rank0(claim))

    def _set_threads(self) -> None:
        threads = self.cfg.threads
        if threads:
            cores = os.cpu_count() or 1
            if threads > cores:  # more threads than cores only thrash (4096 of them hung a 2-core machine)
                self._log(logging.WARNING, "threads %d: this machine has %d cores; using %d", threads, cores, cores)
            torch.set_num_threads(min(threads, cores))
        elif self.world > 1 and self.device.type == "cpu":
            # torchrun sets OMP_NUM_THREADS=1; "all cores" means the node's cores shared out among its processes.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))

    def _load_data(self, local_rank: int) -> tuple[Dataset, str]:
        """The dataset with train and val splits, and where val came from."""
        cfg = self.cfg
        # Under torchrun each node's first process decodes (and caches) the dataset while the others wait.
        if self.world > 1 and local_rank != 0:
            dist.barrier()
        ds = load_dataset(cfg.data, format=cfg.format, classes=cfg.classes, val_fraction=cfg.val_fraction)
        if self.world > 1 and local_rank == 0:
            dist.barrier()
        val_source = "val"
        if "val" not in ds.splits and "train" in ds.splits and cfg.val_fraction > 0:
            ds = carve_val(ds, cfg.val_fraction, cfg.seed)
            val_source = f"{cfg.val_fraction:.0%} of train (stratified, seed {cfg.seed})"
            self._log(logging.INFO, "%s has no val split: validating on %s, %d images; val_fraction sets the share",
                      cfg.data, val_source, len(ds["val"]))
        for split in ("train", "val"):
            if split not in ds.splits:
                raise FerkitError(f"{cfg.data}: has no {split} split; training needs train and val "
                                  "(set val_fraction above 0 to carve val out of train)")
        return ds, val_source

    def _crop(self) -> int:
        if not 0 <= self.cfg.crop <= self.input_size:
            raise FerkitError(f"crop: {self.cfg.crop} must lie between 0 (whole face) and the face size "
                              f"{self.input_size}")
        return self.cfg.crop or self.input_size

    def _build_model(self) -> nn.Module:
        """The network on the training device: a fine-tune's starting weights, or pretrained ones, frozen as set."""
        cfg = self.cfg
        kw = {} if cfg.dropout is None else {"dropout": cfg.dropout}
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, len(self.classes), **kw)
        if cfg.init:
            # "default": the shipped model's weights, beside its ONNX file in the package.
            init = assets_dir() / "ferkit_default.safetensors" if cfg.init == "default" else cfg.init
            new, matched = init_from(model, init, self.classes, parse_map(cfg.class_map))
            self._log(logging.INFO, "starting from %s%s%s", cfg.init,
                      f"; classes matched by emotion: {matched_note(matched)}" if matched else "",
                      f"; new classes (their output rows start afresh): {', '.join(new)}" if new else "")
        elif cfg.pretrained and hasattr(model, "load_pretrained"):
            model.load_pretrained()
            self._log(logging.INFO, "starting from %s's pretrained weights", cfg.model)
        if cfg.freeze:
            if not cfg.init:
                raise FerkitError("freeze: only the output layer would learn on a random body; set init as well")
            head = classifier_name(model) + "."
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith(head)
        if cfg.sync_bn and self.world > 1:
            if self.device.type != "cuda":
                raise FerkitError("sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; set sync_bn = false on CPUs")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _data_parallel(self) -> nn.Module:
        """What the training forward goes through: DDP under torchrun (gradients all-reduced in backward). EMA,
        checkpoints and validation use the plain module, whose weights are the same in every process."""
        if self.world == 1:
            return self.model
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # BatchNorm statistics are averaged after each step below, not copied from rank 0 before each forward
        # (the argument was renamed in newer PyTorch).
        new_name = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                  **{"forward_sync_buffers" if new_name else "broadcast_buffers": False})
        torch.manual_seed(self.cfg.seed + self.rank)  # dropout masks differ between processes
        return net

    def _teacher(self) -> Teacher:
        cfg = self.cfg
        if cfg.augment.mixup or cfg.augment.cutmix:
            raise FerkitError("teacher: mixup and cutmix can't be used with distillation (the views are stored)")
        specs = teacher_specs(cfg.teacher)
        if len(specs) == 1 and specs[0].endswith(".npz"):
            path = Path(specs[0])
        else:
            path = self.out / runs.TEACHER
            if self.rank == 0:
                compute_teacher(specs, self.ds["train"].images, self.ds["train"].labels, self.classes, cfg.augment,
                                self.crop, cfg.teacher_views, cfg.seed, self.device, path, bf16=self.bf16)
            if self.world > 1:
                dist.barrier()  # the others read the file rank 0 wrote (a shared run folder across nodes)
        return Teacher(path, self.classes, len(self.x_train), self.crop, cfg.distill_temperature, self.device,
                       cfg.augment.flip)

    def _steps_per_epoch(self) -> int:
        n, bs = len(self.x_train), self.cfg.batch_size
        # A last batch smaller than the number of processes would leave some with nothing to learn from: it is
        # skipped (other images each epoch). With one process this is ceil(n / batch_size).
        steps = n // bs + (n % bs >= self.world)
        if steps == 0:
            raise FerkitError(f"{self.cfg.data}: {n} training images, fewer than the {self.world} processes")
        return steps

    def _record_run(self) -> None:
        """The run's settings (out as claimed) and the code this start or resume runs, beside its results."""
        text = to_toml(absolute_paths(dataclasses.replace(self.cfg, out=str(self.out))))
        atomic_write(self.out / runs.CONFIG, lambda p: Path(p).write_text(text))
        runs.add_provenance(self.out, {**runs.provenance(), "start_epoch": self.epoch})

    # -- helpers -----------------------------------------------------------------------------------------------
    def _from_rank0(self, fn: Callable[[], Any]) -> Any:
        """fn() in rank 0, its result (or its FerkitError) in every process."""
        out: Any = None
        if self.rank == 0:
            try:
                out = fn()
            except FerkitError as e:
                out = e
        if self.world > 1:
            box = [out]
            dist.broadcast_object_list(box, src=0)
            out = box[0]
        if isinstance(out, FerkitError):
            raise out
        return out

    def _log(self, level: int, msg: str, *args: Any) -> None:
        if self.rank == 0:  # the other processes train the same model: one voice is enough
            log.log(level, msg, *args)

    # -- state -------------------------------------------------------------------------------------------------
    def _rng_states(self) -> list[dict[str, Any]]:
        """Every process's random state (a collective call under torchrun: all of them must make it)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        mine = {"gen": self.gen.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}
        if self.world == 1:
            return [mine]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, mine)
        return states

    def _state(self) -> dict[str, Any]:
        rng = self._rng_states()
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "ema": None if self.ema is None else {"shadow": self.ema.shadow, "steps": self.ema.steps},
            "gen": rng[0]["gen"],
            "torch_rng": rng[0]["torch"],
            "rng": rng,  # one entry per process
            "epoch": self.epoch,
            "best": self.best,
            "start": self.start,
            "best_epoch": self.best_epoch,
            "row": self.last_row,
        }

    def _read_state(self) -> dict[str, Any]:
        # Rank 0 reads the run folder and hands the state to the others: only its node needs the folder.
        path = self.out / runs.STATE

        def read() -> dict[str, Any]:
            if not path.exists():
                raise FerkitError(f"--resume: {path} not found; nothing to resume")
            # weights_only: the resumable state holds tensors and plain values only, nothing to unpickle.
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated, foreign or tampered: torch raises many types
                raise FerkitError(f"--resume: {path} is not a resumable state of this run "
                                  f"({str(e).splitlines()[0][:160]})") from None

        return self._from_rank0(read)

    def _load_state(self) -> None:
        path = self.out / runs.STATE
        st = self._read_state()
        try:
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["opt"])
            self.sched.load_state_dict(st["sched"])
        except Exception as e:  # a state of another model or torch version: none of them a user error
            raise FerkitError(f"--resume: {path} is not a resumable state of this run ({str(e).splitlines()[0][:160]})"
                              ) from None
        total = self.cfg.epochs * self.steps_per_epoch
        if self.cfg.schedule == "onecycle" and self.sched.total_steps != total:
            # Another number of epochs (or of steps per epoch): continue the same one-cycle curve stretched to it.
            self._log(logging.WARNING, "resuming with %d steps in all instead of %d: the schedule is re-planned "
                      "from here", total, self.sched.total_steps)
            self.sched = make_schedule(self.cfg, self.opt, self.steps_per_epoch, st["epoch"] * self.steps_per_epoch)
        if self.ema is not None and st["ema"] is not None:
            self.ema.shadow = {k: v.to(self.device) for k, v in st["ema"]["shadow"].items()}
            self.ema.steps = st["ema"]["steps"]
        # States written before per-process random states were kept hold one process's, as "gen" and "torch_rng".
        rng = st.get("rng") or [{"gen": st["gen"], "torch": st["torch_rng"], "cuda": None}]
        if len(rng) == self.world:
            mine = rng[self.rank]
            self.gen.set_state(mine["gen"].cpu())
            torch.set_rng_state(mine["torch"].cpu())
            if mine.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"].cpu(), self.device)
        else:
            self._log(logging.WARNING, "resuming on %d processes instead of %d: weights, optimiser, schedule, EMA "
                      "and epoch carry on, the random draws of augmentation start afresh", self.world, len(rng))
            seed = _seed(self.cfg.seed, st["epoch"], 1, self.rank)
            self.gen.manual_seed(seed)
            torch.manual_seed(seed)
        self.epoch, self.best, self.best_epoch = st["epoch"], st["best"], st["best_epoch"]
        self.start = st.get("start")
        if self.rank == 0:
            self._repair_log(st)
        self._log(logging.INFO, "resumed %s at epoch %d", self.out, self.epoch)

    def _repair_log(self, st: dict[str, Any]) -> None:
        # Rows of epochs after the checkpoint (a kill between the log and the save) are trained again.
        rows = [r for r in runs.read_log(self.out) if r["epoch"] <= self.epoch]
        # ...and the row of the checkpoint's own epoch comes back if a kill fell between the save and the log.
        if st.get("row") and (not rows or rows[-1]["epoch"] < self.epoch):
            rows.append(st["row"])
        runs.write_log(self.out, rows)

    def eval_model(self) -> nn.Module:
        if self.ema is None:
            return self.model
        m = create_model(self.cfg.model, len(self.classes)).to(self.device)
        m.load_state_dict(self.ema.shadow)
        return m

    # -- loop --------------------------------------------------------------------------------------------------
    def _order(self) -> torch.Tensor:
        # The epoch's order depends on the seed and the epoch only: the same in every process, for any number of them.
        gen = torch.Generator(device=self.device).manual_seed(_seed(self.cfg.seed, self.epoch, 0))
        n = len(self.x_train)
        if self.cfg.balance == "sampler":
            labels = torch.from_numpy(self.ds["train"].labels).to(self.device)
            w = self.class_weights[labels]
            return torch.multinomial(w, n, replacement=True, generator=gen)
        return torch.randperm(n, generator=gen, device=self.device)

    def _share(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a global batch: equal shares, but in a short last batch."""
        return batch.tensor_split(self.world)[self.rank] if self.world > 1 else batch

    @torch.no_grad()
    def _average_buffers(self) -> None:
        bufs = [b for b in self.model.buffers() if b.dtype.is_floating_point]
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.all_reduce(flat)
        flat /= self.world
        for b, v in zip(bufs, flat.split([b.numel() for b in bufs]), strict=True):
            b.copy_(v.view_as(b))

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Each image is weighted by its own (possibly soft) label, before smoothing: weighting the smoothed
        # target per class would push every image towards the rare classes.
        weight = target @ self.class_weights if self.cfg.balance == "weights" else 1.0
        ls = self.cfg.label_smoothing
        if ls:
            target = target * (1 - ls) + ls / target.shape[1]
        return (-(target * F.log_softmax(logits.float(), 1)).sum(1) * weight).mean()

    def _warm_up_freeze(self) -> None:
        """During the first freeze_epochs only the output layer learns (a new head on a pretrained body would
        otherwise send large random gradients into it); the first freeze_blocks blocks never do."""
        cfg = self.cfg
        if cfg.freeze or not (cfg.freeze_epochs or cfg.freeze_blocks):
            return
        blocks = _blocks(self.model)
        for name, p in self.model.named_parameters():
            if name in blocks:
                p.requires_grad = self.epoch >= cfg.freeze_epochs and blocks[name] >= cfg.freeze_blocks

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self._warm_up_freeze()
        if self.cfg.freeze:
            # A frozen body keeps the normalisation statistics it was trained with.
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = self._order()
        total, correct, loss_sum, t0 = 0, 0, 0.0, time.time()
        label = f"epoch {self.epoch + 1}/{self.cfg.epochs}"
        n_images = min(len(order), self.steps_per_epoch * self.cfg.batch_size)
        bs = self.cfg.batch_size
        for step in range(self.steps_per_epoch):
            batch = order[step * bs : (step + 1) * bs]
            idx = self._share(batch)
            y = self.y_train[idx]
            if self.teacher is not None:
                x, soft = self.teacher.batch(idx, self.gen)
            else:
                x = augment(self.x_train[idx].float().unsqueeze(1), self.cfg.augment, self.gen, self.cfg.crop)
                x, y = mix(x, y, self.cfg.augment, self.gen)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.net(x)
            loss = self._loss(logits, y)
            if self.teacher is not None:
                a = self.cfg.distill_alpha
                loss = (1 - a) * loss + a * distill_loss(logits, soft, self.cfg.distill_temperature)
            self.opt.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients; weighting each share by its size makes that the gradient of
            # the global batch's mean loss, as one process would compute it, short last batch included.
            (loss * (len(idx) * self.world / len(batch)) if self.world > 1 else loss).backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            if self.sync_buffers:
                self._average_buffers()
            if self.cfg.schedule != "plateau":
                self.sched.step()
            if self.ema is not None:
                self.ema.update(self.model)
            total += len(idx)
            correct += int((logits.argmax(1) == y.argmax(1)).sum())
            loss_sum += loss.item() * len(idx)
            if self.progress:
                self.progress(label, min((step + 1) * bs, n_images), n_images)
        if self.world > 1:
            sums = torch.tensor([total, correct, loss_sum], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            total, correct, loss_sum = int(sums[0]), int(sums[1]), float(sums[2])
        return {"train_loss": loss_sum / total, "train_acc": correct / total, "images_per_s": total / (time.time() - t0)}

    def validate(self) -> dict[str, float]:
        """Validation metrics, the same in every process: each predicts its share, all of them get all shares."""
        val = self.ds["val"]
        n, nc = len(val.images), len(self.classes)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        prob = (predict_proba(self.eval_model(), val.images[lo:hi], self.device, crop=self.crop) if hi > lo
                else np.zeros((0, nc), np.float32))
        if self.world > 1:
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, prob)
            prob = np.concatenate(parts)
        return {f"val_{k}": v for k, v in validation_metrics(val.labels, prob).items()}

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.cfg.select_metric == "val_loss" else value > self.best

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._log(
            logging.INFO, "training %s on %s: %d images, %d classes, %s, %d epochs%s",
            cfg.model, cfg.data, len(self.x_train), len(self.classes), "bf16" if self.bf16 else "fp32", cfg.epochs,
            f"; {self.world} processes x {cfg.batch_size // self.world} images per step" if self.world > 1 else "",
        )
        if cfg.init and self.epoch == 0 and self.best is None:
            self._score_start()
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
                if self.rank == 0:
                    self.save_weights(self.out / runs.WEIGHTS)
            else:
                stale += 1
            # The log row follows its checkpoint: a resume drops rows newer than the state it restarts from.
            self.last_row = row
            state = self._state()
            if self.rank == 0:
                atomic_write(self.out / runs.STATE, lambda p, st=state: torch.save(st, p))
                runs.append_log(self.out, row)
            self._log(
                logging.INFO,
                "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f macro-F1 %.4f  %.0f img/s  %.0fs",
                self.epoch, cfg.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                row["val_macro_f1"], row["images_per_s"], row["seconds"],
            )
            if self.on_epoch is not None:
                self.on_epoch(self.epoch, row)
            if cfg.patience and stale >= cfg.patience:
                self._log(logging.INFO, "early stop: no better %s for %d epochs", cfg.select_metric, stale)
                break
        summary = {"best_epoch": self.best_epoch, cfg.select_metric: self.best, "epochs_run": self.epoch,
                   "val_split": self.val_source}
        if cfg.init:
            summary["start"] = self.start
            summary["beat_start"] = self.best_epoch > 0
            if self.best_epoch == 0:
                self._log(logging.WARNING, "training did not beat its start: %s stayed %.4f (the starting model's); "
                          "the run keeps the starting weights", cfg.select_metric, self.best)
        return summary

    def _score_start(self) -> None:
        """A fine-tune's epoch 0: the starting model's own validation score, kept as the best so far, so that a run
        which does not beat it ends with the weights it began with, and says so."""
        row = self.validate()
        self.start = self.best = row[self.cfg.select_metric]
        self.best_epoch = 0
        if self.rank == 0:
            self.save_weights(self.out / runs.WEIGHTS)
        self._log(logging.INFO, "epoch 0 (the starting model %s)  val loss %.4f acc %.4f macro-F1 %.4f",
                  self.cfg.init, row["val_loss"], row["val_acc"], row["val_macro_f1"])

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


def train(cfg: TrainConfig, resume: bool = False, exist_ok: bool = False, progress: ProgressFn | None = None,
          on_epoch: EpochFn | None = None, on_out: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train, keep the best checkpoint by validation, then export it to ONNX and write metrics.json (see Trainer
    for the arguments). The summary's "run" is the run folder.

    Under torchrun every process calls this; rank 0 finishes the run folder and returns the full summary, the
    others return the training summary.
    """
    started = dist_env()[1] > 1 and dist.is_available() and not dist.is_initialized()
    try:
        trainer = Trainer(cfg, resume=resume, progress=progress, exist_ok=exist_ok, on_epoch=on_epoch, on_out=on_out)
        summary = {"run": str(trainer.out), **trainer.fit()}
        if trainer.rank == 0:

            summary = finish_run(trainer.out, summary)
        return summary
    finally:
        if started and dist.is_initialized():
            # Every process tears the group down together: one that left while rank 0 was still exporting could
            # abort at exit in gloo's threads (seen as a SIGABRT of rank 1 after a finished run).
            dist.barrier()
            dist.destroy_process_group()
