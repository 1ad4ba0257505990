"""The package's structure, held to docs/architecture.md: no import circles, no import up a layer, inference without
the dataset readers or PyTorch (scripts/import_graph.py reads the graph from the source)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_circles_and_no_import_up_a_layer() -> None:
    r = _graph_tool().report(ROOT / "src" / "ferkit")
    assert r["modules"] > 60
    assert r["cycles"] == [], r["cycles"]
    assert r["upward"] == [], r["upward"]


def test_the_graph_tool_sees_circles_and_upward_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "ferkit"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from ferkit.data import b\n")
    (pkg / "data" / "b.py").write_text("def f():\n    from ferkit.data.a import x\n")
    (pkg / "views.py").write_text("from ferkit.data.a import y\n")
    r = _graph_tool().report(pkg)
    assert r["cycles"] == [["ferkit.data.a", "ferkit.data.b"]]
    assert r["upward"] == ["ferkit.views:1 -> ferkit.data.a"]
    assert r["inside_functions"] == ["ferkit.data.b:2 -> ferkit.data.a"]


def test_inference_loads_neither_dataset_readers_nor_torch() -> None:
    code = ("import sys, numpy as np\n"
            "from ferkit import EmotionRecognizer\n"
            "rec = EmotionRecognizer(threads=1)\n"
            "rec.predict(np.zeros((48, 48), np.uint8))\n"
            "list(rec.stream([np.zeros((48, 48), np.uint8)]))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('ferkit.data', "
            "'ferkit.training', 'ferkit.evaluation', 'ferkit.models', 'ferkit.service', 'ferkit.cli'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
