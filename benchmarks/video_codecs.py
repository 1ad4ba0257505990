"""Which codecs this OpenCV build writes for annotated videos, and what each costs per 640x480 frame.

`ferkit predict clip.mp4 --save out/` writes the first of ferkit.inference.video.VIDEO_CODECS that opens (browser-
playable H.264, VP8, VP9, then MPEG-4 Part 2). This prints, for each, whether it opens and the milliseconds per frame
to encode 60 frames of the astronaut moving across a plain background (the speed matters: encoding runs in the same
loop as detection and classification).

    python benchmarks/video_codecs.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _common import astronaut, machine


def main() -> None:
    from ferkit.inference.video import VIDEO_CODECS, _quiet_stderr

    face = cv2.resize(astronaut(), (300, 300))
    frames = []
    for t in range(60):
        f = np.full((480, 640, 3), 200, np.uint8)
        f[40:340, 20 + 3 * t : 320 + 3 * t] = face
        frames.append(f)
    print(f"machine: {machine()}, load "
          f"{os.getloadavg()[0]:.1f}; OpenCV {cv2.__version__}")
    print(f"{'codec':6} {'file':6} {'opens':6} {'ms/frame':>9} {'bytes':>9}")
    with tempfile.TemporaryDirectory() as d:
        for fourcc, suffix in VIDEO_CODECS:
            path = str(Path(d) / f"v{suffix}")
            with _quiet_stderr():
                w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 30, (640, 480))
            if not w.isOpened():
                print(f"{fourcc:6} {suffix:6} {'no':6}")
                continue
            t = time.perf_counter()
            for f in frames:
                w.write(f)
            w.release()
            ms = 1000 * (time.perf_counter() - t) / len(frames)
            print(f"{fourcc:6} {suffix:6} {'yes':6} {ms:9.1f} {os.path.getsize(path):9,}")


if __name__ == "__main__":
    main()
