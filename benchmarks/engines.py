"""Batch inference inside Ray and Spark against the plain command: images/s on the same photos, in one run.

Every engine predicts the same folder of photos (2,000 of realval.zip's by default, else FER2013 test images) and
writes every result: `ferkit predict DIR --out FILE` (the command, start-up included; again with FERKIT_THREADS=1,
the one ONNX Runtime thread each Spark task and each of 2 Ray actors gets), the library in one process
(`EmotionRecognizer().predict(DIR)`), Ray Data through `ferkit.integrations.ray.predict_to_parquet` with 1 and 2
actors, and Spark through `ferkit.integrations.spark.predict_udf` on a column of paths with local[1] and local[2],
writing Parquet. Each runs in its own process; an engine's start (ray.init, the SparkSession) is timed apart from
its job, and the job's time against the command's is the engine's overhead. Ray actors get cores / actors CPUs
(and as many ONNX Runtime threads); a Spark task gets spark.task.cpus = 1 thread, so local[1] uses one core.

    python benchmarks/engines.py                                     # every engine, 2,000 photos
    python benchmarks/engines.py --images 200 --engines command,ray1  # a quick check (figures meaningless)
    python benchmarks/engines.py --data ../shared/datasets/fer2013.zip --images 5000

Each engine's rows and faces are counted from what it wrote: they must agree with the command's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from _common import DATASETS, FER2013_ZIP, REALVAL_ZIP, cpu_name

ENGINES = ("command", "command1", "library", "ray1", "ray2", "spark1", "spark2")
SUFFIXES = (".jpg", ".jpeg", ".png")


def extract(data: Path | None, images: int, folder: Path) -> str:
    """`images` photos from a zip or folder into `folder`; which ones, in words."""
    if data is None:
        data = next((p for p in (REALVAL_ZIP, FER2013_ZIP) if p.is_file()), None)
        if data is None:
            raise SystemExit(f"no dataset in {DATASETS}; give --data (a zip or a folder of photos)")
    if data.is_dir():
        names = sorted(p for p in data.rglob("*") if p.suffix.lower() in SUFFIXES)[:images]
        for i, p in enumerate(names):
            (folder / f"{i:06d}{p.suffix.lower()}").write_bytes(p.read_bytes())
    else:
        with zipfile.ZipFile(data) as z:
            names = sorted(n for n in z.namelist() if n.lower().endswith(SUFFIXES) and not n.startswith("train/"))
            names = names[:images]
            for i, n in enumerate(names):
                (folder / f"{i:06d}{Path(n).suffix.lower()}").write_bytes(z.read(n))
    if len(names) < images:
        raise SystemExit(f"{data}: only {len(names)} photos, {images} asked for")
    return f"{len(names):,} photos of {data.name}"


# -- one engine, in its own process ----------------------------------------------------------------------------
def run_engine(engine: str, folder: str, out: Path) -> dict:
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    if engine.startswith("command"):
        ferkit = Path(sys.executable).with_name("ferkit")
        env = os.environ | ({"FERKIT_THREADS": "1"} if engine == "command1" else {})
        subprocess.run([str(ferkit), "predict", folder, "--out", str(out / "predictions.jsonl"), "-q"], check=True,
                       env=env)
        return {"start_s": 0.0, "job_s": time.perf_counter() - t0, "threads_each": 1 if engine == "command1" else "all",
                **count_jsonl(out / "predictions.jsonl")}
    if engine == "library":
        from ferkit import EmotionRecognizer

        batch = EmotionRecognizer().predict(folder)
        return {"start_s": 0.0, "job_s": time.perf_counter() - t0, "rows": len(batch),
                "faces": sum(len(p.faces) for p in batch)}
    workers = int(engine[-1])
    if engine.startswith("ray"):
        import ray

        from ferkit.integrations.ray import predict_to_parquet

        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t0
        t1 = time.perf_counter()
        predict_to_parquet(folder, out / "parquet", actors=workers, cpus_per_actor=cores // workers)
        job = time.perf_counter() - t1
        ray.shutdown()
        return {"start_s": start, "job_s": job, "threads_each": cores // workers, **count_parquet(out / "parquet")}
    from pyspark.sql import SparkSession

    from ferkit.integrations.core import list_images
    from ferkit.integrations.spark import predict_udf

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers need this interpreter's ferkit
    spark = (SparkSession.builder.master(f"local[{workers}]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    start = time.perf_counter() - t0
    t1 = time.perf_counter()
    files, _ = list_images(folder)
    paths = spark.createDataFrame([(p,) for p in files], "path string").repartition(4 * workers)
    paths.select(predict_udf()("path").alias("p")).select("p.*").write.parquet(str(out / "parquet"))
    job = time.perf_counter() - t1
    spark.stop()
    return {"start_s": start, "job_s": job, "threads_each": 1, **count_parquet(out / "parquet")}


def count_jsonl(path: Path) -> dict:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return {"rows": len(recs), "faces": sum(len(r.get("faces", [])) for r in recs)}


def count_parquet(path: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["faces"])
    return {"rows": t.num_rows, "faces": int(pc.sum(pc.list_value_length(t.column("faces"))).as_py() or 0)}


# -- the table -------------------------------------------------------------------------------------------------
LABELS = {"command": "`ferkit predict DIR --out FILE`", "command1": "the same, `FERKIT_THREADS=1`", "library": "library, `EmotionRecognizer().predict(DIR)`",
          "ray1": "Ray Data, 1 actor", "ray2": "Ray Data, 2 actors", "spark1": "Spark local[1]",
          "spark2": "Spark local[2]"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="a zip or folder of photos (default: realval.zip)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: one engine, in this process
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_engine(args.run, args.folder, args.out)))
        return
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engines {', '.join(sorted(unknown))}; choose from {', '.join(ENGINES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="ferkit-engines-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        what = extract(args.data, args.images, folder)
        print(f"{what}; {os.cpu_count()} cores, {cpu_name()}", file=sys.stderr)
        for engine in engines:
            out = Path(tmp) / engine
            out.mkdir()
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, __file__, "--run", engine, "--folder", str(folder), "--out",
                                   str(out)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{engine} failed:\n{done.stderr[-3000:]}")
            r = {"engine": engine, "load_1min": load, **json.loads(done.stdout.strip().splitlines()[-1])}
            r["images_per_s"] = args.images / r["job_s"]
            results.append(r)
            print(f"{engine}: {r['job_s']:.1f} s, {r['images_per_s']:.1f} images/s", file=sys.stderr)
    base = next((r for r in results if r["engine"] == "command"), results[0])
    one = next((r for r in results if r["engine"] == "command1"), None)
    print(f"\n{what}; job time against `{base['engine']}`'s ({base['job_s']:.1f} s)\n")
    print("| engine | threads each | start s | job s | images/s | job time vs command | vs 1-thread command | rows "
          "| faces | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        r["vs_command"] = r["job_s"] / base["job_s"]
        r["vs_command1"] = r["job_s"] / one["job_s"] if one else None
        vs1 = f"{r['vs_command1']:.2f}x" if one else "-"
        print(f"| {LABELS[r['engine']]} | {r.get('threads_each', 'all')} | {r['start_s']:.1f} | {r['job_s']:.1f} | "
              f"{r['images_per_s']:.1f} | {r['vs_command']:.2f}x | {vs1} | {r['rows']:,} | {r['faces']:,} | "
              f"{r['load_1min']:.1f} |")
    if any((r["rows"], r["faces"]) != (base["rows"], base["faces"]) for r in results):
        print("\nwarning: the engines disagree on rows or faces (see the table)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
