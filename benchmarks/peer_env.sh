#!/usr/bin/env bash
# The peers of benchmarks/peers.py, each in its own environment, never in ferkit's.
#
# fer (default): the `fer` package in its own virtual environment. fer's declared dependencies pull a CUDA build of
# PyTorch (for its optional RetinaFace/MTCNN detectors), so it is installed without them, plus what its default Haar
# cascade + TensorFlow Lite path needs.
#
# --faceapi: face-api.js (npm @vladmandic/face-api 1.7.15, MIT) for Node.js, with the pure-JavaScript
# @tensorflow/tfjs 4.22.0 and its WebAssembly backend (no native add-on), installed with `npm ci` from the pinned
# lock file in benchmarks/faceapi/ (every package checked against its sha512 there; no install scripts run) into a
# cache folder outside the repository: $FERKIT_CACHE/npm/ferkit-faceapi-peer (default ~/.cache/ferkit/...). Its
# model weights come inside the package (model/). Needs node >= 14 and npm.
#
# Usage: bash benchmarks/peer_env.sh [VENV]        (default: benchmarks/.peer-venv, git-ignored)
#        bash benchmarks/peer_env.sh --faceapi [DIR] (default: the cache folder above; prints it)
#        then: python benchmarks/peers.py --peer-python VENV/bin/python [--faceapi-root DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "${1:-}" == "--faceapi" ]]; then
    dest="${2:-${FERKIT_CACHE:-$HOME/.cache/ferkit}/npm/ferkit-faceapi-peer}"
    command -v node >/dev/null && command -v npm >/dev/null || { echo "error: node and npm are needed" >&2; exit 2; }
    # Up to date when the installed lock file is the pinned one and the packages are there.
    if cmp -s "$here/faceapi/package-lock.json" "$dest/package-lock.json" \
        && [[ -f "$dest/node_modules/@vladmandic/face-api/model/face_expression_model.bin" ]]; then
        echo "face-api peer ready: $dest"
        exit 0
    fi
    mkdir -p "$(dirname "$dest")"
    tmp="$(mktemp -d "$(dirname "$dest")/.faceapi-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    cp "$here/faceapi/package.json" "$here/faceapi/package-lock.json" "$tmp/"
    (cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    node -e "const r = (m) => require(require.resolve(m, {paths: ['$tmp']}));
             const f = r('@vladmandic/face-api/package.json'), t = r('@tensorflow/tfjs/package.json');
             console.log('face-api', f.version, 'tfjs', t.version)"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
    echo "face-api peer ready: $dest"
    exit 0
fi

venv="${1:-$here/.peer-venv}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --no-deps "fer==25.10.3"
"$venv/bin/python" -m pip install --quiet tensorflow-cpu opencv-contrib-python pandas requests tqdm Pillow matplotlib
"$venv/bin/python" -c "import fer, tensorflow as tf; print('fer', fer.__version__ if hasattr(fer, '__version__') else '25.10.3', 'tensorflow', tf.__version__)"
echo "peer venv ready: $venv"
