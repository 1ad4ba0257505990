"""A model's first run, reported as JSON: run as a script in a child process by ferkit.inference.onnx_check, under
a memory limit, and imported by ferkit.inference.onnx_classifier for the built-in models (no limit needed: they are
ours).

Imports only the standard library, NumPy and ONNX Runtime, so that the child needs nothing else to start.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def describe(session: Any, crop: int) -> dict:
    """Declared inputs and outputs (as ONNX Runtime sees them after its shape inference), and the first output for
    one blank crop x crop face, or why it could not be computed."""
    import numpy as np

    ins = [[i.name, i.type, list(i.shape)] for i in session.get_inputs()]
    outs = [[o.name, o.type, list(o.shape)] for o in session.get_outputs()]
    report: dict[str, Any] = {"inputs": ins, "outputs": outs}
    if len(ins) != 1 or not outs:
        return report
    try:
        y = np.asarray(session.run([outs[0][0]], {ins[0][0]: np.zeros((1, 1, crop, crop), np.float32)})[0])
        report["shape"] = list(y.shape)
        if y.dtype.kind in "fiub" and y.size <= 1 << 16:
            report["values"] = y.astype(np.float64).ravel().tolist()
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        report["error"] = first_line(e)
    return report


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _limit_memory(budget: int) -> None:
    """The address space from here on: what is mapped now (Python, NumPy, ONNX Runtime) plus `budget`."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError, ValueError, IndexError):
        return  # not Linux: the time limit still holds
    resource.setrlimit(resource.RLIMIT_AS, (mapped + budget, mapped + budget))


def main(argv: list[str]) -> None:
    path, crop, budget = argv[0], int(argv[1]), int(argv[2])
    import numpy  # noqa: F401 - mapped before the limit, as in any ferkit process
    import onnxruntime as ort

    _limit_memory(budget)
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # a hostile graph's warnings would only fill a pipe nobody reads
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        report: dict = {"load_error": first_line(e)}
    else:
        report = describe(session, crop)
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
