"""Check the TF.js importer against TensorFlow.js itself: each pretrained backbone's graph run by TensorFlow.js
on Node.js (pure JavaScript CPU backend) and by ferkit.models.tfjs, on the same images; then ferkit's MobileNet-v1
with the imported weights against the graph (gray faces: the three channels equal).

    python scripts/check_tfjs_import.py           # prints the largest differences per backbone and output
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ferkit.models import create_model
from ferkit.models.pretrained import BACKBONES, PACKAGES, fetch, run_tfjs
from ferkit.models.tfjs import load_graph


def images(n: int = 4, side: int = 224) -> np.ndarray:
    """Random RGB noise and gray copies of scikit-image's astronaut face (pixels 0..255, NHWC)."""
    rng = np.random.default_rng(0)
    x = rng.random((n, side, side, 3)).astype(np.float32) * 255
    try:
        import cv2
        import skimage.data

        face = cv2.cvtColor(skimage.data.astronaut()[20:220, 140:340], cv2.COLOR_RGB2GRAY)
        x[n // 2:] = cv2.resize(face, (side, side)).astype(np.float32)[None, :, :, None]
    except ImportError:
        pass
    return x


def main() -> None:
    torch.set_num_threads(2)
    x = images()
    for name, b in BACKBONES.items():
        path = fetch(b.package) / b.graph
        outputs = [o.split(":")[0] for o in json.loads(path.read_text())["signature"]["outputs"]]
        ref = run_tfjs(path, x, outputs)
        graph = load_graph(path, outputs).eval()
        with torch.no_grad():
            got = graph(torch.from_numpy(x))
        got = got if isinstance(got, tuple) else (got,)
        for o, r, g in zip(outputs, ref, got, strict=True):
            print(f"{name:13s} {o:22s} TF.js vs ferkit graph: max |diff| {np.abs(r - g.numpy()).max():.2e} "
                  f"(values up to {np.abs(r).max():.2f})")
        net = create_model(name, 7)
        net.scale = 224  # the graph's own input size, so both see the same pixels
        net.load_pretrained()
        gray = x[x.shape[0] // 2:]
        with torch.no_grad():
            feats = net.eval().forward_features(torch.from_numpy(gray[..., :1]).permute(0, 3, 1, 2))
        ref_feats = run_tfjs(path, gray, [b.features])[0]
        print(f"{name:13s} {b.features:22s} TF.js vs MobileNetV1 (gray): max |diff| "
              f"{np.abs(ref_feats - feats.numpy()).max():.2e}  [{PACKAGES[b.package].spec}]")


if __name__ == "__main__":
    main()
