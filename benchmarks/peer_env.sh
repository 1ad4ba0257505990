#!/usr/bin/env bash
# The `fer` package (the peer in benchmarks/peers.py) in its own virtual environment, never in ferkit's.
#
# fer's declared dependencies pull a CUDA build of PyTorch (for its optional RetinaFace/MTCNN detectors), so it is
# installed without them, plus what its default Haar cascade + TensorFlow Lite path needs.
#
# Usage: bash benchmarks/peer_env.sh [VENV]      (default: benchmarks/.peer-venv, git-ignored)
#        then: python benchmarks/peers.py --peer-python VENV/bin/python
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.peer-venv}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --no-deps "fer==25.10.3"
"$venv/bin/python" -m pip install --quiet tensorflow-cpu opencv-contrib-python pandas requests tqdm Pillow matplotlib
"$venv/bin/python" -c "import fer, tensorflow as tf; print('fer', fer.__version__ if hasattr(fer, '__version__') else '25.10.3', 'tensorflow', tf.__version__)"
echo "peer venv ready: $venv"
