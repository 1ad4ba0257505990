"""A validation split carved out of train, for datasets that come with train (and test) only."""

from __future__ import annotations

from dataclasses import replace

from ferkit.data.dataset import Dataset
from ferkit.data.formats import _stratified
from ferkit.errors import FerkitError


def carve_val(ds: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """The dataset with `fraction` of its train split moved to a new val split: seeded, and stratified so that every
    class keeps its share in both parts. Test, if any, is untouched."""
    if "train" not in ds.splits:
        raise FerkitError(f"{ds.source}: has no train split to carve a validation split from")
    if not 0 < fraction < 1:
        raise FerkitError(f"val_fraction: {fraction} must lie strictly between 0 and 1 to carve a validation split "
                          f"out of {ds.source}'s train split")
    parts = _stratified(ds.splits["train"], fraction, 0.0, seed)
    if "val" not in parts or "train" not in parts:
        raise FerkitError(f"{ds.source}: {len(ds.splits['train'])} training images are too few to set "
                          f"{fraction:.0%} aside for validation; add a val split or raise val_fraction")
    splits = {"train": parts["train"], "val": parts["val"], **{k: v for k, v in ds.splits.items() if k == "test"}}
    return replace(ds, splits=splits)
