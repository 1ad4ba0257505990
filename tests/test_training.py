"""Training: config files and overrides, augmentation, a short run, exact resume, export to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.models import create_model, list_models  # noqa: E402
from ferkit.training import Trainer, load_config, train  # noqa: E402
from ferkit.training.augment import AugmentConfig, augment, mix  # noqa: E402


def small_cfg(data: Path, out: Path, *extra: str):
    return load_config(None, [f"data={data}", f"out={out}", "model=vgg_s", "epochs=3", "batch_size=16",
                              "threads=1", "ema=0.9", "lr=0.05", *extra])


def test_registry_builds_every_model_and_rejects_unknown() -> None:
    from ferkit.models import architectures
    from ferkit.models.export import classifier_name

    x = torch.rand(2, 1, 48, 48) * 255
    assert list_models() == ["baseline", "faceres", "faceres96", "faceres96n", "faceres_deep", "faceres_deep96n",
                             "resnet_l", "resnet_m", "resnet_s", "vgg_e", "vgg_f", "vgg_f1", "vgg_fs", "vgg_l", "vgg_m", "vgg_s", "vgg_sg", "vgg_xs"]
    for name in list_models():
        assert getattr(architectures, name).__name__ == name  # each model is a function of its own name
        model = create_model(name, 5)
        assert model(x).shape == (2, 5)
        # The declared output layer is the network's last Linear, the one that maps to the 5 classes.
        head = dict(model.named_modules())[classifier_name(model)]
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        assert head is last and head.out_features == 5
    with pytest.raises(FerkitError, match="unknown"):
        create_model("nope")


def test_registry_refuses_a_duplicate_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from ferkit.models import registry

    # A copy, so a registry that wrongly accepted the duplicate would not hand the impostor to later tests.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def vgg_s(num_classes: int = 7) -> torch.nn.Module:
        return torch.nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="'vgg_s' is already registered"):
        registry.register_model(vgg_s)
    assert type(create_model("vgg_s")).__name__ == "VGG"  # the built-in network still answers to its name


@pytest.mark.filterwarnings("error::torch.jit.TracerWarning")  # `ferkit train` prints none when it exports
def test_grid_head_exports_where_the_map_does_not_divide(tmp_path: Path) -> None:
    import onnxruntime as ort

    from ferkit.models.export import export_onnx

    model = create_model("vgg_sg").eval()
    for side in (40, 48):  # the last feature map is 2x2 at 40 and 3x3 at 48, pooled to the 2x2 grid
        x = torch.rand(3, 1, side, side) * 255
        with torch.no_grad():
            ref = torch.softmax(model(x), 1).numpy()
        f = export_onnx(model, tmp_path / f"m{side}.onnx", list("abcdefg"), side, side)
        # The export leaves the model it was given as it was.
        with torch.no_grad():
            np.testing.assert_allclose(torch.softmax(model(x), 1).numpy(), ref, atol=1e-6)
        got = ort.InferenceSession(str(f)).run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_config_file_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('model = "resnet_s"\nlr = 0.1\n[augment]\nmixup = 0.2\n')
    cfg = load_config(p, ["lr=0.02", "augment.erase=0", "soft_labels=true"])
    assert (cfg.model, cfg.lr, cfg.augment.mixup, cfg.augment.erase, cfg.soft_labels) == ("resnet_s", 0.02, 0.2, 0.0, True)
    with pytest.raises(FerkitError, match="unknown setting 'lrr'"):
        load_config(None, ["lrr=1"])
    with pytest.raises(FerkitError, match="expected a number"):
        load_config(None, ["epochs=many"])
    p.write_text("model = [")
    with pytest.raises(FerkitError, match="not valid TOML"):
        load_config(p)


def test_augment_keeps_shape_range_and_changes_images() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 48, 48) * 255
    y = augment(x, AugmentConfig(), gen)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 255
    assert not torch.allclose(x, y)
    t = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    xm, tm = mix(x, t, AugmentConfig(mixup=0.4, cutmix=0.4), gen)
    assert xm.shape == x.shape and torch.allclose(tm.sum(1), torch.ones(8))


def test_short_run_learns_and_writes_run_folder(tiny_folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # The blob classes are positions: a mirror swaps two of them, which would cap accuracy at 2/3.
    summary = train(small_cfg(tiny_folders, out, "epochs=6", "augment.flip=false"))
    for f in ("config.toml", "log.jsonl", "best.safetensors", "state.pt", "model.onnx", "metrics.json", "curves.png"):
        assert (out / f).exists(), f
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert summary["val_acc"] > 0.55  # three separable blob positions; chance is 0.33
    # The ONNX export gives the same probabilities as the PyTorch weights it came from.
    import onnxruntime as ort

    from ferkit.models.export import load_weights

    model, info = load_weights(out / "best.safetensors")
    assert sorted(info["classes"]) == ["happy", "neutral", "sad"]
    x = np.random.default_rng(0).integers(0, 256, (4, 1, 48, 48)).astype(np.float32)
    sess = ort.InferenceSession(str(out / "model.onnx"))
    p_onnx = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        p_torch = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == info["classes"] and meta["input_size"] == "48"


def test_resume_continues_exactly(tiny_folders: Path, tmp_path: Path) -> None:
    full = Trainer(small_cfg(tiny_folders, tmp_path / "full"))
    full.fit()
    part = Trainer(small_cfg(tiny_folders, tmp_path / "part", "epochs=3"))
    part.cfg.epochs = 2  # stop early as an interruption would, with the same schedule length
    part.fit()
    resumed = Trainer(small_cfg(tiny_folders, tmp_path / "part"), resume=True)
    assert resumed.epoch == 2
    resumed.fit()
    a = full.model.state_dict()
    b = resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_run_folder_records_the_code_of_each_start(tiny_folders: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """provenance.jsonl: ferkit's and torch's versions and the git commit, one record per start or resume; a run
    folder from before ferkit kept them resumes all the same."""
    import re

    import ferkit
    from ferkit import runs

    run = tmp_path / "run"
    first = Trainer(small_cfg(tiny_folders, run, "epochs=2"))
    (record,) = runs.read_provenance(run)
    assert (record["ferkit"], record["torch"], record["start_epoch"]) == (ferkit.__version__, torch.__version__, 0)
    git = record["git"]  # None where ferkit is installed rather than checked out
    assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and git["dirty"] in (True, False))
    first.cfg.epochs = 1  # stop after one epoch, as an interruption would
    first.fit()
    (run / runs.PROVENANCE).unlink()  # as in a run folder trained before provenance was kept
    assert Trainer(small_cfg(tiny_folders, run, "epochs=2"), resume=True).epoch == 1
    Trainer(small_cfg(tiny_folders, run, "epochs=2"), resume=True)
    assert [r["start_epoch"] for r in runs.read_provenance(run)] == [1, 1]
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path))  # no git: no commit, and no error
        assert runs.git_commit() is None
    assert runs._git(tmp_path, "rev-parse", "HEAD") is None  # not a repository


def test_trainer_leaves_the_config_alone(tiny_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without out the trainer claims a new numbered folder of its own; the caller's config keeps out None (a
    second run from it gets the next number), and config.toml records the folder claimed."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [f"data={tiny_folders}", "model=vgg_s", "epochs=1", "batch_size=16", "threads=1"])
    claimed: list[Path] = []
    first, second = Trainer(cfg, on_out=claimed.append), Trainer(cfg)
    assert cfg.out is None
    assert claimed == [first.out] == [Path("runs") / "vgg_s-tiny"] and second.out == Path("runs") / "vgg_s-tiny2"
    assert load_config(first.out / "config.toml").out == str(tmp_path / "runs" / "vgg_s-tiny")


def test_imbalance_options_and_soft_labels_need_votes(tiny_folders: Path, tmp_path: Path) -> None:
    # Unbalance the training split: 24 happy, 12 sad, 6 neutral.
    for cls, keep in (("sad", 12), ("neutral", 6)):
        for f in sorted((tiny_folders / "train" / cls).iterdir())[keep:]:
            f.unlink()
    counts = {}
    for balance in ("none", "weights", "sampler"):
        t = Trainer(small_cfg(tiny_folders, tmp_path / balance, "epochs=1", f"balance={balance}"))
        counts[balance] = np.bincount(t.ds["train"].labels[t._order().cpu().numpy()], minlength=3)
        summary = t.fit()
        assert summary["epochs_run"] == 1 and np.isfinite(summary["val_acc"])
    n = np.bincount(t.ds["train"].labels, minlength=3)
    assert sorted(n.tolist()) == [6, 12, 24]
    # Class weights are inverse frequencies (mean 1 over the images): a neutral image weighs 4 times a happy one.
    w = t.class_weights.cpu().numpy()
    np.testing.assert_allclose(w * n, n.sum() / 3, rtol=1e-6)
    # Plain epochs show each image once; balanced sampling draws every class about equally often.
    assert counts["none"].tolist() == n.tolist() and counts["weights"].tolist() == n.tolist()
    assert counts["sampler"].min() >= 8 and counts["sampler"].max() <= 20  # 14 each on average, 42 draws
    with pytest.raises(FerkitError, match="vote distributions"):
        Trainer(small_cfg(tiny_folders, tmp_path / "soft", "soft_labels=true"))


def test_class_weighted_loss_weights_each_image_by_its_own_label(tiny_folders: Path, tmp_path: Path) -> None:
    t = Trainer(small_cfg(tiny_folders, tmp_path / "run", "balance=weights", "label_smoothing=0.1"))
    k = len(t.classes)
    t.class_weights = torch.linspace(0.5, 4.0, k)
    logits, labels = torch.randn(6, k), torch.arange(6) % k
    per_image = F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    # The smoothing mass is not weighted by class, so a common image is not pulled towards the rare ones.
    expected = (t.class_weights[labels] * per_image).mean()
    torch.testing.assert_close(t._loss(logits, F.one_hot(labels, k).float()), expected)


def test_resume_without_state_is_a_clear_error(tiny_folders: Path, tmp_path: Path) -> None:
    with pytest.raises(FerkitError, match="nothing to resume"):
        Trainer(small_cfg(tiny_folders, tmp_path / "none"), resume=True)


def test_weights_file_that_is_not_safetensors(tmp_path: Path) -> None:
    from ferkit.models.export import load_weights

    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(FerkitError, match="not a safetensors file"):
        load_weights(bad)


def test_fine_tune_matches_classes_by_name_and_freezes_the_body(tiny_folders: Path, tmp_path: Path) -> None:
    from conftest import make_class_folders

    from ferkit.models.export import classifier_name, init_from, read_weights

    Trainer(small_cfg(tiny_folders, tmp_path / "base", "epochs=2")).fit()
    base = tmp_path / "base" / "best.safetensors"
    # Another order, one class dropped and one the saved model never saw.
    other = make_class_folders(tmp_path / "other", ["sad", "happy", "angry"], per_class=8)
    t = Trainer(small_cfg(other, tmp_path / "ft", f"init={base}", "freeze=true", "epochs=1"))
    saved, info = read_weights(base)
    head = classifier_name(t.model)
    w = t.model.state_dict()[f"{head}.weight"].clone()
    shared = [c for c in t.classes if c in info["classes"]]
    assert sorted(shared) == ["happy", "sad"]
    for c in shared:
        torch.testing.assert_close(w[t.classes.index(c)], saved[f"{head}.weight"][info["classes"].index(c)])
    body = {k: v.clone() for k, v in t.model.state_dict().items() if not k.startswith(head)}
    t.fit()
    after = t.model.state_dict()
    for k, v in body.items():
        torch.testing.assert_close(after[k], v, msg=k)  # weights and BatchNorm statistics untouched
    assert not torch.equal(after[f"{head}.weight"], w)
    with pytest.raises(FerkitError, match="set model=vgg_s"):
        Trainer(small_cfg(other, tmp_path / "x", f"init={base}", "model=resnet_s"))
    with pytest.raises(FerkitError, match="set init"):
        Trainer(small_cfg(other, tmp_path / "y", "freeze=true"))
    # The shipped model's weights are in the package, so "default" fine-tunes from them.
    from ferkit.utils import assets_dir

    assert init_from(create_model("vgg_s", 2), assets_dir() / "ferkit_default.safetensors",
                     ["happy", "contempt"]) == (["contempt"], {})
    # A course's folders Happy/Sad/Surprised/Calm: the same emotions in other case or spelling keep their rows, as
    # evaluation matches them; --map names the rest; what was matched is said.
    course = ["Happy", "Sad", "Surprised", "Calm", "Joy"]
    new, matched = init_from(create_model("vgg_s", 5), assets_dir() / "ferkit_default.safetensors", course,
                             {"Joy": "happy"})
    assert new == [] and matched == {"Happy": "happy", "Sad": "sad", "Surprised": "surprise", "Calm": "neutral",
                                     "Joy": "happy"}
    with pytest.raises(FerkitError, match="--map: Glee not among"):
        init_from(create_model("vgg_s", 5), assets_dir() / "ferkit_default.safetensors", course, {"Glee": "happy"})


def test_fine_tune_scores_its_start_and_keeps_it_if_not_beaten(tiny_folders: Path, tmp_path: Path, caplog) -> None:
    """Epoch 0 is the starting model's validation score; a run that never beats it keeps the starting weights and
    says so (an lr of 10 wrecks the network in one epoch)."""
    from ferkit.models.export import read_weights

    Trainer(small_cfg(tiny_folders, tmp_path / "base", "epochs=2")).fit()
    base = tmp_path / "base" / "best.safetensors"
    with caplog.at_level("INFO", logger="ferkit.train"):
        t = Trainer(small_cfg(tiny_folders, tmp_path / "ft", f"init={base}", "epochs=1", "lr=10", "ema=0",
                              "schedule=cosine"))
        summary = t.fit()
    assert "epoch 0 (the starting model" in caplog.text
    assert summary["best_epoch"] == 0 and summary["beat_start"] is False and summary["start"] == summary["val_acc"]
    assert "did not beat its start" in caplog.text
    kept, _ = read_weights(tmp_path / "ft" / "best.safetensors")
    start, _ = read_weights(base)
    for k, v in start.items():
        torch.testing.assert_close(kept[k], v, msg=k)


@pytest.mark.slow
def test_imbalance_study_script_trains_each_mode_and_reports(tiny_folders: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data = "{tiny_folders}"\nbatch_size = 16\nthreads = 1\nema = 0\n')
    script = Path(__file__).resolve().parents[1] / "scripts" / "imbalance_study.py"
    cmd = [sys.executable, str(script), str(cfg), "--epochs", "1", "--out", str(tmp_path / "study")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| none", "| weights", "| sampler"]
    study = json.loads((tmp_path / "study" / "imbalance.json").read_text())
    assert set(study["runs"]) == {"none", "weights", "sampler"}
    assert (tmp_path / "study" / "imbalance.png").stat().st_size > 10_000
    # Finished runs are kept, not trained again.
    stamp = (tmp_path / "study" / "none" / "best.safetensors").stat().st_mtime_ns
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert (tmp_path / "study" / "none" / "best.safetensors").stat().st_mtime_ns == stamp


def test_train_command_fine_tunes_and_rejects_missing_weights(tiny_folders: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ferkit.cli import app

    common = ["train", "--data", str(tiny_folders), "--epochs", "1", "-s", "batch_size=16", "-s", "threads=1"]
    base = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "base")])
    assert base.exit_code == 0, base.output
    ft = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "ft"), "--json", "-s", "freeze=true",
                                  "--init", str(tmp_path / "base" / "best.safetensors")])
    assert ft.exit_code == 0, ft.output
    summary = json.loads(ft.stdout)
    # Epoch 0 is the starting model: the run keeps whichever of it and epoch 1 validates better, and says which.
    assert summary["best_epoch"] in (0, 1) and summary["beat_start"] == (summary["best_epoch"] == 1)
    assert summary["start"] is not None
    bad = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "bad"), "--init", str(tmp_path / "nope.safetensors")])
    assert bad.exit_code == 2 and "nope.safetensors: no such file" in bad.output
    assert "Traceback" not in bad.output


def test_train_and_test_only_gets_a_seeded_stratified_val_split(tmp_path: Path, caplog) -> None:
    """A student's own data: train/ and test/ folders, no validation (issue 13.10)."""
    import logging

    from conftest import make_class_folders

    from ferkit.data import load_dataset
    from ferkit.data.split import carve_val

    data = make_class_folders(tmp_path / "mine", ["happy", "sad", "neutral"], per_class=20, splits=("train", "test"))
    ds = load_dataset(data)
    assert set(ds.splits) == {"train", "test"}
    a, b = carve_val(ds, 0.2, seed=1), carve_val(ds, 0.2, seed=1)
    assert a["val"].names == b["val"].names and a["val"].names != carve_val(ds, 0.2, seed=2)["val"].names
    assert np.bincount(a["val"].labels).tolist() == [4, 4, 4]  # every class keeps its share
    assert not set(a["val"].names) & set(a["train"].names) and len(a["train"]) == 48
    assert a["test"].names == ds["test"].names
    with caplog.at_level(logging.INFO, logger="ferkit.train"):
        summary = train(small_cfg(data, tmp_path / "run", "epochs=1", "val_fraction=0.2"))
    assert "no val split: validating on 20% of train" in caplog.text
    assert summary["val_split"] == "20% of train (stratified, seed 0)"
    assert load_config(tmp_path / "run" / "config.toml").val_fraction == 0.2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_split"].startswith("20% of train")
    with pytest.raises(FerkitError, match="val_fraction"):
        Trainer(small_cfg(data, tmp_path / "none", "val_fraction=0"))


def _scripted(t: Trainer, monkeypatch: pytest.MonkeyPatch, vals: list[dict[str, float]]) -> None:
    """Make `t.fit()` quick and its validation scripted: no training steps, the given val rows in turn."""
    it = iter(vals)
    monkeypatch.setattr(t, "train_epoch", lambda: {"train_loss": 1.0, "train_acc": 0.5, "images_per_s": 1.0})
    monkeypatch.setattr(t, "validate", lambda: {"val_loss": 1.0, "val_macro_f1": 0.5, **next(it)})


def test_cosine_schedule_anneals_to_zero(tiny_folders: Path, tmp_path: Path) -> None:
    t = Trainer(small_cfg(tiny_folders, tmp_path / "run", "schedule=cosine", "epochs=2", "lr=0.04"))
    t.fit()
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert 0.04 > lrs[0] > lrs[1] and lrs[1] == pytest.approx(0, abs=1e-9)
    assert lrs[0] == pytest.approx(0.02, rel=0.2)  # halfway through, half the peak


def test_plateau_schedule_halves_after_three_epochs_without_progress(tiny_folders: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    t = Trainer(small_cfg(tiny_folders, tmp_path / "run", "schedule=plateau", "epochs=6", "lr=0.04"))
    _scripted(t, monkeypatch, [{"val_acc": a} for a in (0.5, 0.5, 0.5, 0.5, 0.5, 0.6)])
    t.fit()
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.04, 0.04, 0.04, 0.04, 0.02, 0.02])


def test_patience_stops_early_and_keeps_the_best_epoch(tiny_folders: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    t = Trainer(small_cfg(tiny_folders, tmp_path / "run", "patience=2", "epochs=10"))
    _scripted(t, monkeypatch, [{"val_acc": a} for a in (0.4, 0.6, 0.5, 0.55, 0.9, 0.9)])
    summary = t.fit()
    assert (summary["epochs_run"], summary["best_epoch"], summary["val_acc"]) == (4, 2, 0.6)
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(("metric", "best"), [("val_acc", 3), ("val_loss", 1), ("val_macro_f1", 2)])
def test_select_metric_chooses_the_checkpoint(tiny_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              metric: str, best: int) -> None:
    t = Trainer(small_cfg(tiny_folders, tmp_path / "run", f"select_metric={metric}"))
    rows = [{"val_acc": 0.5, "val_loss": 0.7, "val_macro_f1": 0.3}, {"val_acc": 0.6, "val_loss": 0.9, "val_macro_f1": 0.6},
            {"val_acc": 0.7, "val_loss": 0.8, "val_macro_f1": 0.4}]
    _scripted(t, monkeypatch, rows)
    saved = []
    monkeypatch.setattr(t, "save_weights", lambda path: saved.append(t.epoch))
    summary = t.fit()
    assert summary["best_epoch"] == best and summary[metric] == rows[best - 1][metric]
    assert saved[-1] == best  # best.safetensors was last written at the best epoch


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_train_and_leave_norms_and_biases_undecayed(tiny_folders: Path, tmp_path: Path, name: str) -> None:
    t = Trainer(small_cfg(tiny_folders, tmp_path / "run", f"optimizer={name}", "epochs=1", "lr=0.002",
                          "weight_decay=0.01"))
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    assert type(t.opt) is kind
    decay, no_decay = t.opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    row = t.train_epoch()
    assert np.isfinite(row["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_grad_clip_bounds_every_step(tiny_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        norm = real(params, max_norm, *a, **k)
        after = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        calls.append((max_norm, float(norm), float(after)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    t = Trainer(small_cfg(tiny_folders, tmp_path / "clip", "grad_clip=0.05", "epochs=1"))
    t.train_epoch()
    assert len(calls) == t.steps_per_epoch
    assert all(m == 0.05 and after <= 0.05 * 1.001 for m, _, after in calls)
    assert max(norm for _, norm, _ in calls) > 0.05  # the clip had something to do
    calls.clear()
    Trainer(small_cfg(tiny_folders, tmp_path / "free", "epochs=1")).train_epoch()
    assert calls == []


def test_on_epoch_sees_every_row_and_may_stop_the_run(tiny_folders: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(epoch: int, row: dict) -> None:
        seen.append((epoch, row["val_acc"]))
        if epoch == 2:
            raise Stop

    t = Trainer(small_cfg(tiny_folders, tmp_path / "run", "epochs=5"), on_epoch=on_epoch)
    _scripted(t, monkeypatch, [{"val_acc": a} for a in (0.1, 0.2, 0.3)])
    with pytest.raises(Stop):
        t.fit()
    assert seen == [(1, 0.1), (2, 0.2)]
    # The epoch the callback stopped at is saved: a resume goes on from there.
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["epoch"] == 2


def test_trainer_and_evaluate_report_the_same_validation_metrics(tmp_path: Path) -> None:
    """One definition (ferkit.scoring): the log's val_* equal evaluate's figures on the val split, even when val
    lacks a class (macro-F1 over the classes present in both)."""
    import shutil

    from conftest import make_class_folders

    from ferkit.evaluation import evaluate

    data = make_class_folders(tmp_path / "d", ["happy", "sad", "neutral"], per_class=16)
    shutil.rmtree(data / "validation" / "neutral")
    train(small_cfg(data, tmp_path / "run", "epochs=2", "augment.flip=false", "ema=0"))
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # best.safetensors holds the weights of the best epoch: its row is what they scored.
    best_epoch = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_epoch"]
    best = next(r for r in rows if r["epoch"] == best_epoch)
    m = evaluate(str(tmp_path / "run" / "best.safetensors"), data, split="val", report=False,
                 out=tmp_path / "ev", n_boot=100).metrics["metrics"]
    assert m["n"] == 32
    assert m["accuracy"] == pytest.approx(best["val_acc"])
    assert m["macro_f1"] == pytest.approx(best["val_macro_f1"], abs=1e-6)
    assert m["log_loss"] == pytest.approx(best["val_loss"], abs=1e-4)


def test_layers_import_downwards_and_the_library_draws_nothing() -> None:
    """training and models never import evaluation, inference, service or the CLI; nothing below the CLI imports
    rich or switches matplotlib's backend (the caller's choice)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "ferkit"
    above = {"training": ("evaluation", "inference", "service", "cli"), "models": ("training", "evaluation",
             "inference", "service", "cli"), "runs.py": ("training", "evaluation", "inference", "service", "cli"),
             "scoring.py": ("training", "evaluation", "inference", "service", "cli")}
    checked = 0
    for part in ("training", "models", "evaluation", "runs.py", "scoring.py", "utils.py", "views.py"):
        files = [src / part] if part.endswith(".py") else sorted((src / part).glob("*.py"))
        for f in files:
            tree = ast.parse(f.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            for bad in above.get(part, ()):
                assert not any(n.startswith(f"ferkit.{bad}") for n in names), f"{f.name} imports ferkit.{bad}"
            assert not any(n.split(".")[0] == "rich" for n in names), f"{f.name} imports rich"
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
            assert not any(c.func.attr == "use" and getattr(c.func.value, "id", "") == "matplotlib" for c in calls), f
            checked += 1
    assert checked > 20
