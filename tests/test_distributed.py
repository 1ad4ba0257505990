"""Data-parallel training under torchrun: 2 processes with Gloo on 127.0.0.1, on a tiny dataset.

1. The whole network (BatchNorm in training mode, augmentation, mixup, random crops, dropout and EMA on):
   a 1-process checkpoint resumes on 2 processes, whose replicas end with identical weights and EMA, each having
   learned from its own share of the same permutation a single process would have used, and only rank 0 wrote the
   run folder; and a 2-process run interrupted and resumed on 2 ends bit-identical to an uninterrupted one.
2. `torchrun -m ferkit train` on 2 processes matches a 1-process run with the same global batch, and the loss
   decreases. These runs train only the output layer of the shipped model (freeze = true), so BatchNorm uses its
   stored statistics; with augmentation, dropout and EMA off, the 2 shares of a batch then give the gradient of the
   whole batch and the only difference is float rounding. (BatchNorm in training mode normalises each share by its
   own statistics, a different computation, unless sync_bn on GPUs.)

The first run starts its 2 processes directly with the environment torchrun gives its workers (RANK, WORLD_SIZE,
MASTER_ADDR, ...), the second through torchrun itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = torch.distributed
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("this PyTorch build has no torch.distributed with Gloo", allow_module_level=True)

from conftest import make_class_folders  # noqa: E402
from helpers import free_port  # noqa: E402

from ferkit.training import Trainer, load_config  # noqa: E402

# Largest weight difference after 3 epochs of the 2-process run against the 1-process run (fp32): float rounding
# only, 2e-8 measured here; leaving the short last batch's shares unweighted (6 and 5 images) makes it 8e-4.
TOLERANCE = 1e-6

# The blob classes depend on the horizontal position: no mirroring.
NO_AUGMENT = ["augment.flip=false", "augment.scale=0", "augment.rotate=0", "augment.translate=0",
              "augment.brightness=0", "augment.contrast=0", "augment.erase=0"]
# 25 images per class: 75 training images, so the last batch of 16 (11 images) splits unevenly, 6 + 5.
COMPARE = ["init=default", "freeze=true", "dropout=0", "ema=0", "precision=fp32", "epochs=3", "batch_size=16",
           "lr=0.05", "threads=1", *NO_AUGMENT]

# One of the 2 processes, running 4 trainings through the library in one process group (one start-up); it leaves
# its weights and the images of each step it learned from for the test to compare.
WORKER = """
import os
import sys
import torch
from ferkit.training import Trainer, load_config
from ferkit.training.trainer import dist_env

tmp, settings = sys.argv[1], sys.argv[2:]


def run(out, resume=False, stop=0, seen=None):
    t = Trainer(load_config(None, [*settings, f"out={tmp}/{out}"]), resume=resume)
    if seen is not None:
        share = t._share

        def record(batch):
            seen.append(share(batch).cpu())
            return seen[-1].to(batch.device)

        t._share = record
    if stop:
        t.cfg.epochs = stop  # stop early as an interruption would, with the same schedule length
    t.fit()
    return t


seen = []
t = run("one", resume=True, seen=seen)  # the test's 1-process checkpoint, resumed on 2
torch.save({"model": t.model.state_dict(), "ema": t.ema.shadow, "seen": seen}, f"{tmp}/rank{dist_env()[0]}.pt")
run("full")
run("part", stop=1)
run("part", resume=True)
torch.distributed.destroy_process_group()
# Everything is saved: leave without the interpreter's teardown, where Gloo's threads have been seen to abort
# ("terminate called without an active exception") on a loaded machine, which is not what this test is about.
sys.stdout.flush()
os._exit(0)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")  # Gloo on the loopback interface
    return env


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict:
    return torch.load(run / "state.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("ddp") / "tiny", ["happy", "sad", "neutral"], per_class=25,
                              splits=("train", "validation"))


@pytest.mark.slow
def test_two_processes_keep_identical_replicas_and_resume(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    settings = [f"data={data}", "epochs=2", "batch_size=16", "threads=1", "ema=0.9", "crop=32", "lr=0.05",
                "augment.flip=false", "augment.mixup=0.2"]
    one = Trainer(load_config(None, [*settings, f"out={out}"]))
    one.cfg.epochs = 1  # stop after the first epoch, as an interruption would
    one.fit()
    order = one._order()  # the second epoch's permutation, as one process would draw it
    port = str(free_port())
    procs = []
    (tmp_path / "worker.py").write_text(WORKER)
    for rank in range(2):
        env = _env() | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank),
                        "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path), *settings],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # Step by step, rank 0 took the first half of the global batch and rank 1 the second: together, the same order
    # one process would have followed, every image once (the last batch of 11 split 6 + 5).
    assert [len(s) for s in a["seen"]] == [8, 8, 8, 8, 6] and [len(s) for s in b["seen"]] == [8, 8, 8, 8, 5]
    assert torch.equal(torch.cat([x for sa, sb in zip(a["seen"], b["seen"], strict=True) for x in (sa, sb)]),
                       order.cpu())
    for what in ("model", "ema"):
        assert a[what].keys() == b[what].keys()
        for k in a[what]:
            assert torch.equal(a[what][k], b[what][k]), f"{what} {k} differs between the processes"
    assert [r["epoch"] for r in rows(out)] == [1, 2]  # one row per epoch: rank 1 wrote none
    state = torch.load(out / "state.pt", weights_only=True)
    for k, v in state["model"].items():
        assert torch.equal(v, a["model"][k]), k
    # The checkpoint holds both processes' augmentation generators, which draw apart.
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["gen"], state["rng"][1]["gen"])
    # Interrupted after epoch 1 and resumed on as many processes: exactly the uninterrupted run.
    full, part = (torch.load(tmp_path / r / "state.pt", weights_only=True) for r in ("full", "part"))
    assert [r["epoch"] for r in rows(tmp_path / "part")] == [1, 2]
    for x, y in ((full["model"], part["model"]), (full["ema"]["shadow"], part["ema"]["shadow"])):
        for k in x:
            assert torch.equal(x[k], y[k]), f"resumed run: {k} differs from the uninterrupted run"


@pytest.mark.slow
def test_torchrun_on_two_processes_matches_one_with_the_same_global_batch(data: Path, tmp_path: Path) -> None:
    ref, out = tmp_path / "one", tmp_path / "two"
    one = Trainer(load_config(None, [f"data={data}", f"out={ref}", *COMPARE]))
    start = {k: v.clone() for k, v in one.model.state_dict().items()}
    one.fit()
    # The module entry point torchrun launches: the same command as `ferkit train`.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "ferkit", "train",
           "--data", str(data), "--out", str(out), "--json", *(a for s in COMPARE for a in ("-s", s))]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout)["best_epoch"] >= 1  # only rank 0 prints its summary: one JSON document
    for f in ("config.toml", "best.safetensors", "state.pt", "model.onnx", "metrics.json", "curves.png"):
        assert (out / f).exists(), f
    r1, r2 = rows(ref), rows(out)
    assert [r["epoch"] for r in r2] == [1, 2, 3]
    assert r2[-1]["train_loss"] < r2[0]["train_loss"] - 0.05  # the loss decreases
    for a, b in zip(r1, r2, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
        assert b["val_acc"] == a["val_acc"]
    w1, w2 = final_weights(ref), final_weights(out)
    assert max(float((w1[k] - w0).abs().max()) for k, w0 in start.items()) > 1000 * TOLERANCE  # it learned
    differ = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert differ < TOLERANCE, f"2 processes differ from 1 by {differ:.1e}"


NORM_WORKER = """
import sys
import torch
from ferkit.models.mobilenet import IdentityNorm

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
norm = IdentityNorm(4).train()
norm(torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(rank)) * (rank + 1))
torch.save(norm.state_dict(), sys.argv[1] + f"/norm{rank}.pt")
torch.distributed.destroy_process_group()
"""


def test_identity_norms_start_alike_in_every_process(tmp_path: Path) -> None:
    """faceres96n's norms start from the first batch, which differs between processes: they agree on one start (else
    the processes' weights would differ for the whole run; DDP copies rank 0's running statistics to the others)."""
    (tmp_path / "norm.py").write_text(NORM_WORKER)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "norm.py"), str(tmp_path)],
                              env=_env() | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(r),
                                            "WORLD_SIZE": "2"}) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    a, b = (torch.load(tmp_path / f"norm{r}.pt", weights_only=True) for r in range(2))
    assert bool(a["started"]) and torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"])
