"""Data in: read every dataset format, cache decoded arrays, explore and audit (faces are preprocessed by
ferkit.views.preprocess, the one function training, evaluation and inference share)."""

from ferkit.data.dataset import FER2013_CLASSES, FERPLUS_CLASSES, SPLITS, Dataset, Split
from ferkit.data.formats import load_dataset, select_classes

__all__ = ["FER2013_CLASSES", "FERPLUS_CLASSES", "SPLITS", "Dataset", "Split", "load_dataset", "select_classes"]
