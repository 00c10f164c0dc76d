#!/usr/bin/env python3
"""Single-image query against a saved index of 100K images: ``query.py``'s time, warm and cold.

The index holds ``--n`` synthetic vectors (clustered, L2-normalised; a search costs the same whatever the
vectors' origin: it depends on n, d and the index type) saved by :func:`dedup.index.build_from_features` with the
real algorithm's metadata, so ``query.py`` loads the real model (pretrained weights) and embeds a real photo.

Printed per algorithm and index: the time to load the index and the model (once per process), and the median
time of a single-image query (read + embed the image + search k=10) over ``--repeats`` runs in one process;
and the wall time of one cold ``query.py`` process (Python start, imports, loading, query). Saved as
``benchmarks/results/query_100k.json``.

Example::

    nice -n 10 python3 benchmarks/bench_query.py --algo EfficientNet-Lite0 "Phash 64 bits" --threads 2
"""
import argparse
import os  # noqa: I001

# as the scripts do (fast_search/cli.py): FAISS's OpenMP threads must sleep, not spin, on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import subprocess  # noqa: E402
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from dedup.features import Featurizer, normalize  # noqa: E402
from dedup.index import SavedIndex, build_from_features, query_index  # noqa: E402
from fast_search.synthetic import clustered_database, random_codes  # noqa: E402
from helpers.results import write_json  # noqa: E402


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", nargs="+", default=["EfficientNet-Lite0", "Phash 64 bits"])
    parser.add_argument("--factory", nargs="+", default=["Flat"])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "query"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "query_100k.json"))
    args = parser.parse_args(argv)
    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    image = query_image()
    rows = []
    print(f"query image {image}; n={args.n}; threads={args.threads}; load average {os.getloadavg()[0]:.2f}")
    for algo in args.algo:
        featurizer = Featurizer(algo, device="cpu")
        for factory in args.factory:
            folder = Path(args.out) / f"{featurizer.algo.replace(' ', '_')}_{factory.replace(',', '_')}_{args.n}"
            if featurizer.binary:
                vectors = random_codes(args.n, featurizer.dim, seed=0)
            else:
                vectors = normalize(clustered_database(args.n, featurizer.dim, n_clusters=1000, seed=0))
            names = [f"synthetic/{i:07d}.jpg" for i in range(args.n)]
            tick = time.perf_counter()
            if not (folder / "index.json").is_file():  # same n, same seed: the same index
                build_from_features(folder, names, vectors, featurizer, factory=factory,
                                    nprobe=16 if "IVF" in factory else None, threshold=None,
                                    train_size=min(args.n, 50_000))
            build_s = time.perf_counter() - tick
            del vectors
            tick = time.perf_counter()
            saved = SavedIndex(folder)
            _ = saved.names
            load_index_s = time.perf_counter() - tick
            tick = time.perf_counter()
            model = saved.featurizer(device="cpu")
            load_model_s = time.perf_counter() - tick
            times = []
            for _ in range(args.repeats + 1):  # the first warms the caches
                tick = time.perf_counter()
                kept, query = model.files([image])
                result = query_index(saved, query, kept, k=10)
                times.append(time.perf_counter() - tick)
            warm = float(np.median(times[1:]))
            tick = time.perf_counter()
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            done = subprocess.run([sys.executable, str(ROOT / "query.py"), image, "--index", str(folder), "-k",
                                   "10", "--device", "cpu"], capture_output=True, text=True, env=env)
            cold = time.perf_counter() - tick
            if done.returncode != 0:
                print(done.stderr[-2000:])
            row = {"algorithm": featurizer.name, "factory": factory, "n": args.n, "d": featurizer.dim,
                   "binary": featurizer.binary, "index_bytes": (folder / "index.faiss").stat().st_size,
                   "build_s": build_s, "load_index_s": load_index_s, "load_model_s": load_model_s,
                   "warm_query_s_median": warm, "warm_query_s_all": times[1:], "cold_process_s": cold,
                   "threads": args.threads, "load_average": os.getloadavg()[0], "top1": result[0]["neighbour"]}
            rows.append(row)
            print(f"{featurizer.name:<20s} {factory:<12s} n={args.n} d={featurizer.dim}: single-image query "
                  f"{warm * 1000:.0f} ms warm (median of {args.repeats}; image read + embed + search k=10), "
                  f"index load {load_index_s:.2f} s, model load {load_model_s:.2f} s, cold query.py process "
                  f"{cold:.1f} s; load average {os.getloadavg()[0]:.2f}")
    write_json(args.results, {"rows": rows, "cpus": os.cpu_count()})
    return rows


if __name__ == "__main__":
    main()
