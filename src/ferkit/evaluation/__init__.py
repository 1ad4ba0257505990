"""Evaluate any model on any dataset: metrics with confidence intervals, calibration, comparisons, an HTML report.

`evaluate(models, data)` writes metrics.json, the figures and report.html; `compare(models, data)` puts
several models side by side with McNemar's test; `calibrate(model, data)` fits and stores a temperature.
Heavy dependencies (scikit-learn, SciPy, matplotlib, torch) are imported only when needed.
"""

from ferkit.evaluation.compare import compare, markdown, write_compare
from ferkit.evaluation.core import Evaluation, calibrate, evaluate
from ferkit.evaluation.metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    mcnemar,
    reliability,
)

__all__ = [
    "Evaluation", "bootstrap_ci", "calibrate", "classification_metrics", "compare", "evaluate",
    "expected_calibration_error", "fit_temperature", "markdown", "mcnemar", "reliability",
    "write_compare",
]
