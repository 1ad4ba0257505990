"""`EmotionRecognizer.stream(source)`: a result per image or video frame as soon as it is computed.

The one loop over inputs that `predict()`, `ferkit predict` (table, CSV, JSON lines, `--save`, `--shard`) and batch
jobs share. Images of a folder, glob or list are read one at a time through ferkit.images; an input that cannot be
read becomes a result with `error` set and the rest go on (one explicit input fails with its FerkitError instead).
Videos and cameras go frame by frame through `VideoPipeline` (tracking and smoothing). With `save`, annotated images
keep the source's layout under it and each video gets an annotated video and a per-track timeline; `written` lists
every file, in order. No output replaces another or a file already there: a name taken gets -2, -3, ...
(results.OutputNames; `renamed` says which).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ferkit import images
from ferkit.errors import FerkitError
from ferkit.inference.options import DEFAULT_SMOOTH, check_at_least_one, check_detection, check_tta
from ferkit.inference.results import OutputNames, Prediction
from ferkit.inference.sources import Entry, expand, select_shard
from ferkit.inference.video import FrameSource, IterFrames, Timeline, VideoPipeline, VideoSink


class Pipeline(Protocol):
    """What a stream needs of an EmotionRecognizer: one image's prediction, a video's per-frame pipeline."""

    classes: list[str]

    def predict_image(self, image: np.ndarray, *, detect: bool | None = None, name: str | None = None,
                      keep_crops: bool = False, tta: bool | str | None = None, **detection: Any) -> Prediction: ...

    def video(self, smooth: int = ..., detect_every: int = 1, detect: bool | None = None, keep_crops: bool = False,
              tta: bool | str | None = None, **detection: Any) -> VideoPipeline: ...


class PredictionStream:
    """Iterate for Predictions. `kind`: "image" (one), "images", "video", "camera" or "frames" (an iterator of
    frames), "mixed" (a list with videos); `total`: how many results to expect when known (images, or a video's
    frames); `written`: files saved so far; `renamed`: those of them whose name was taken, to the name they wanted;
    `entries`: the inputs. Closing it early (or Ctrl-C) keeps what was written."""

    def __init__(
        self,
        rec: Pipeline,
        source: Any,
        *,
        detect: bool | None = None,
        name: str | None = None,
        keep_crops: bool = False,
        keep_images: bool = True,
        tta: bool | str | None = None,
        save: str | Path | None = None,
        crops: str | Path | None = None,
        vid_stride: int = 1,
        detect_every: int = 1,
        smooth: int | None = None,
        max_frames: int | None = None,
        shard: tuple[int, int] | None = None,
        skip: Collection[str] = (),
        detect_size: int | None = None,
        threshold: float | None = None,
        max_faces: int | None = None,
        adaptive: bool | None = None,
    ):
        self.detection = check_detection(detect_size, threshold, max_faces, adaptive)
        check_at_least_one(vid_stride=vid_stride, detect_every=detect_every, smooth=smooth or 1)
        if max_frames is not None and max_frames < 0:
            raise FerkitError(f"max_frames {max_frames}: must be >= 0 (0 = all)")
        self.rec = rec
        entries, self.single = expand(source)
        self.entries: list[Entry] = select_shard(entries, shard)
        if skip:
            self.entries = [e for e in self.entries if e.name not in skip]
        self.opts = {"detect": detect, "keep_crops": keep_crops or crops is not None, "tta": check_tta(tta)}
        self.name = name
        self.keep_images = keep_images
        self.save = None if save is None else Path(save)
        self.crops = None if crops is None else Path(crops)
        self.vid_stride, self.detect_every = vid_stride, detect_every
        self.smooth = smooth or DEFAULT_SMOOTH
        self.max_frames = max_frames or None
        self.written: list[Path] = []
        self.names = OutputNames()
        self.renamed = self.names.renamed
        kinds = {e.kind for e in self.entries}
        media = kinds & {"video", "camera", "frames"}
        if self.single:
            self.kind = "image" if not media else next(iter(media))
        else:
            self.kind = "mixed" if media else "images"
        self._frames = None
        if self.single and media:
            # Opened now: a video that cannot be opened fails before anything else happens.
            ref = self.entries[0].ref
            self._frames = IterFrames(ref) if self.kind == "frames" else FrameSource(ref, stride=vid_stride)
        if self._frames is not None:
            n = len(self._frames) or None
            self.total = min(n, self.max_frames) if n and self.max_frames else (n or self.max_frames)
        else:
            self.total = None if media else len(self.entries)
        self._gen = self._run()

    def __iter__(self) -> Iterator[Prediction]:
        return self._gen

    def __next__(self) -> Prediction:
        return next(self._gen)

    def close(self) -> None:
        """Stop early; a video being written is kept (as after Ctrl-C on a camera)."""
        self._gen.close()

    # -- the loop -----------------------------------------------------------------------------------------------
    def _run(self) -> Iterator[Prediction]:
        for e in self.entries:
            if e.kind == "skip":
                yield Prediction([], 0, 0, source=e.name, error=e.error, path=e.key)
            elif e.kind in ("video", "camera", "frames"):
                try:
                    frames = self._frames if self._frames is not None else self._open(e)
                except FerkitError as err:
                    if self.single:
                        raise
                    yield Prediction([], 0, 0, source=e.name, error=str(err), path=e.key)
                    continue
                yield from self._video(e, frames)
            else:
                yield self._image(e)

    def _image(self, e: Entry) -> Prediction:
        rec = self.rec
        try:
            if e.kind == "array":
                pred = rec.predict_image(e.ref, name=self.name, **self.opts, **self.detection)
            else:
                data = images.fetch(e.ref) if e.kind == "url" else e.ref
                decoded = images.load(data, e.name or self.name or "image")
                pred = rec.predict_image(decoded.image, name=e.name or self.name, **self.opts, **self.detection)
                pred = pred.scaled_to(decoded.width, decoded.height)
                pred.image = decoded.image
        except Exception as err:
            if self.single:
                raise
            # One bad item never ends a batch: it is a result with its reason, and the rest go on.
            why = str(err) if isinstance(err, FerkitError) else (
                f"{e.name}: internal error ({type(err).__name__}: {err})")
            return Prediction([], 0, 0, source=e.name, error=(why.splitlines() or [str(e.name)])[0], path=e.key)
        pred.path = e.key
        if self.save is not None:
            rel = Path(e.key) if e.key else Path(f"{Path(e.name).stem if e.name and e.kind != 'url' else 'image'}")
            self.written.append(pred.save(self.names.claim(self.save / rel.with_suffix(".jpg"), e.name)))
        if self.crops is not None:
            self.written += pred.save_crops(self.crops, names=self.names)
        if not (self.keep_images or self.single or e.kind == "array"):
            pred.image = None  # a batch keeps no pixels: plot() re-reads the file
        return pred

    def _open(self, e: Entry):
        return FrameSource(e.ref, stride=self.vid_stride)

    def _video(self, e: Entry, frames) -> Iterator[Prediction]:
        pipe = self.rec.video(smooth=self.smooth, detect_every=self.detect_every, **self.opts, **self.detection)
        wanted = f"camera{e.ref}" if e.kind == "camera" else "frames" if e.kind == "frames" else (
            str(Path(e.key).with_suffix("")).replace("/", "__") if e.key else Path(str(e.ref)).stem)
        # One stem for all of this video's files, none of which may replace a file (clip.mp4 and clip.avi, a
        # second run into the same folder): clip-2.mp4 goes with clip-2_timeline.csv.
        places = [(self.save, p) for p in ("{}.*", "{}_timeline.csv", "{}_track*.png")] if self.save else []
        places += [(self.crops, "{}_f*_t*.png")] if self.crops else []
        stem = self.names.claim_stem(wanted, places) if places else wanted
        first = len(self.written)
        timeline = Timeline(self.rec.classes)
        sink = None
        keep = False
        count = 0
        try:
            for index, t, frame in frames:
                pred = pipe.process(frame, index, t)
                pred.source = e.name
                pred.path = e.key
                timeline.add(pred)
                if self.save is not None:
                    if sink is None:
                        h, w = frame.shape[:2]
                        sink = VideoSink(self.save, stem, frames.fps / frames.stride, (w, h))
                    sink.write(pred.plot())
                if self.crops is not None:
                    self.written += pred.save_crops(self.crops, stem, names=self.names)
                if not self.keep_images:
                    pred.image = None
                count += 1
                yield pred
                if self.max_frames and count >= self.max_frames:
                    break
            keep = True
        except (KeyboardInterrupt, GeneratorExit):
            keep = True  # a camera runs until Ctrl-C, a consumer may stop early: keep what was recorded
            raise
        finally:
            if sink is not None:
                sink.close(keep=keep)
                if keep:
                    self.written.append(sink.path)
            if self.save is not None and keep:
                self.written += timeline.write(self.save, stem)
            self.names.note_renamed(self.written[first:], stem, wanted, e.name)
            frames.release()

