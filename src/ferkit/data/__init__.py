"""Data in: read every dataset format, preprocess faces, cache decoded arrays, explore and audit."""

from ferkit.data.dataset import FER2013_CLASSES, FERPLUS_CLASSES, SPLITS, Dataset, Split
from ferkit.data.formats import load_dataset, select_classes
from ferkit.data.preprocess import preprocess

__all__ = ["FER2013_CLASSES", "FERPLUS_CLASSES", "SPLITS", "Dataset", "Split", "load_dataset", "preprocess", "select_classes"]
