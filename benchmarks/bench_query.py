#!/usr/bin/env python3
"""Single-image query against a saved index of 100K images: ``query.py`` as a user runs it, fresh and warm.

The index holds ``--n`` synthetic vectors (clustered, L2-normalised; a search costs the same whatever the
vectors' origin: it depends on n, d and the index type) saved by :func:`dedup.index.build_from_features` with the
real algorithm's metadata (and, for models, the ONNX export of the network), so ``query.py`` loads the real
model (pretrained weights) and embeds a real photo.

Printed per algorithm and index, each measured on ``query.py`` subprocesses:

- **fresh process**: the wall time of ``query.py IMG --index NAME -k 10`` (Python start, imports, index and model
  loading, the query), median of ``--repeats`` runs (the first run also reads the files into the page cache: it is
  listed, not in the median); for models, also with ``--engine torch`` (``--torch-repeats`` runs), what a fresh
  process costs without the ONNX export;
- **warm**: one ``query.py --index NAME --serve --json -`` process answering the same image ``--repeats`` + 1
  times on standard input (the first answer warms the caches): the median round trip per query (write the path,
  read + embed + search k=10, read the JSON answer), and the process's own load times.

Saved as ``benchmarks/results/query_100k.json``. No peer: imagededup has no saved index to query.

Example::

    flock /work/bench.lock python3 benchmarks/bench_query.py --threads 2
"""
import argparse
import json
import os  # noqa: I001
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from helpers.results import read_json, write_json  # noqa: E402


def query_image():
    for candidate in (ROOT.parent / "shared" / "datasets" / "BSDS500" / "test", ROOT / "Datasets" / "BSDS500" / "test"):
        if candidate.is_dir():
            return str(sorted(candidate.glob("*.jpg"))[0])
    import skimage.data
    from PIL import Image

    path = ROOT / "bench_out" / "query_astronaut.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.astronaut()).save(path)
    return str(path)


def ensure_index(folder, algo, factory, n):
    """Build the synthetic index once (same n, same seed: the same index); rebuilt when it predates the ONNX export
    of the model."""
    info_file = folder / "index.json"
    if info_file.is_file() and "onnx_model" in read_json(info_file):
        return 0.0
    from dedup.features import Featurizer, normalize
    from dedup.index import build_from_features
    from fast_search.synthetic import clustered_database, random_codes

    featurizer = Featurizer(algo, device="cpu")
    if featurizer.binary:
        vectors = random_codes(n, featurizer.dim, seed=0)
    else:
        vectors = normalize(clustered_database(n, featurizer.dim, n_clusters=1000, seed=0))
    names = [f"synthetic/{i:07d}.jpg" for i in range(n)]
    tick = time.perf_counter()
    build_from_features(folder, names, vectors, featurizer, factory=factory, nprobe=16 if "IVF" in factory else None,
                        threshold=None, train_size=min(n, 50_000))
    return time.perf_counter() - tick


def fresh_runs(command, env, repeats):
    """Wall times of ``repeats`` fresh ``query.py`` processes, and the last one's JSON answer."""
    times, answer = [], None
    for _ in range(repeats):
        out = ROOT / "bench_out" / "query_answer.json"
        tick = time.perf_counter()
        done = subprocess.run(command + ["--json", str(out)], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - tick)
        if done.returncode != 0:
            raise RuntimeError(f"query.py failed: {done.stderr[-2000:]}")
        answer = json.loads(out.read_text())
    return times, answer


def warm_runs(command, env, image, repeats):
    """Round-trip times of ``repeats`` queries to one ``query.py --serve`` process (after one warm-up query)."""
    process = subprocess.Popen(command + ["--serve", "--json", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
    tick = time.perf_counter()
    ready = process.stdout.readline()
    startup = time.perf_counter() - tick
    if not ready.startswith("# ready"):
        process.kill()
        raise RuntimeError(f"query.py --serve did not start: {ready}{process.stderr.read()[-2000:]}")
    times, record = [], None
    for _ in range(repeats + 1):
        tick = time.perf_counter()
        process.stdin.write(image + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        while line and not line.startswith("{"):
            line = process.stdout.readline()
        times.append(time.perf_counter() - tick)
        record = json.loads(line)
        if record["error"]:
            raise RuntimeError(record["error"])
    process.stdin.close()
    process.wait(timeout=60)
    return startup, times[1:], times[0], record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", nargs="+", default=["EfficientNet-Lite0", "Phash 64 bits"])
    parser.add_argument("--factory", nargs="+", default=["Flat"])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-repeats", type=int, default=2, help="fresh processes with --engine torch (models)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "query"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "query_100k.json"))
    args = parser.parse_args(argv)
    image = query_image()
    # query.py's threads: FAISS and ONNX Runtime (--threads), torch; BLAS (none of the query's hot paths) capped too
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    rows = []
    print(f"query image {image}; n={args.n}; k=10; threads={args.threads}; device cpu; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}")
    for algo in args.algo:
        for factory in args.factory:
            folder = Path(args.out) / f"{algo.replace(' ', '_')}_{factory.replace(',', '_')}_{args.n}"
            build_s = ensure_index(folder, algo, factory, args.n)
            info = read_json(folder / "index.json")
            command = [sys.executable, str(ROOT / "query.py"), image, "--index", str(folder), "-k", "10",
                       "--device", "cpu", "--threads", str(args.threads)]
            load_before = os.getloadavg()[0]
            fresh, answer = fresh_runs(command, env, args.repeats + 1)
            torch_fresh = []
            if not info["binary"] and args.torch_repeats:
                torch_fresh, _ = fresh_runs(command + ["--engine", "torch"], env, args.torch_repeats)
            serve_command = [c for c in command if c != image]
            startup, warm, first, record = warm_runs(serve_command, env, image, args.repeats)
            row = {"algorithm": info["name"], "factory": info["factory"], "n": args.n, "d": info["dim"],
                   "k": 10, "metric": info["metric"], "binary": info["binary"], "threads": args.threads,
                   "device": "cpu", "engine": answer["engine"],
                   "index_bytes": (folder / "index.faiss").stat().st_size, "build_s": build_s,
                   "fresh_process_s_median": float(np.median(fresh[1:])), "fresh_process_s_all": fresh,
                   "fresh_torch_engine_s": torch_fresh,
                   "fresh_torch_engine_s_median": float(np.median(torch_fresh)) if torch_fresh else None,
                   "fresh_timings": answer["timings"],
                   "serve_startup_s": startup, "warm_query_s_median": float(np.median(warm)),
                   "warm_query_s_all": warm, "warm_first_query_s": first, "serve_timings": record["timings"],
                   "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
                   "top1": answer["results"][0]["neighbour"]}
            rows.append(row)
            print(f"{row['algorithm']:<20s} {row['factory']:<6s} n={args.n} d={row['d']} k=10 {row['metric']}, "
                  f"threads={args.threads}, cpu, engine {row['engine']}: fresh query.py process "
                  f"{row['fresh_process_s_median']:.2f} s (median of {args.repeats}; all {np.round(fresh, 2)}; "
                  f"in it: index open {answer['timings']['load_index_s']:.2f} s, model "
                  f"{answer['timings']['load_model_s']:.2f} s, embed {answer['timings']['features_s']:.3f} s, "
                  f"search {answer['timings']['search_s']:.3f} s)"
                  + (f"; with --engine torch {row['fresh_torch_engine_s_median']:.1f} s" if torch_fresh else "")
                  + f"; warm (--serve) {row['warm_query_s_median'] * 1000:.0f} ms per query (median of "
                    f"{args.repeats}), serve start {startup:.2f} s; load average {load_before:.2f} -> "
                    f"{row['load_average_after']:.2f}")
    write_json(args.results, {"rows": rows, "cpus": os.cpu_count(), "image": image})
    return rows


if __name__ == "__main__":
    main()
