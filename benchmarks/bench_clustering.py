#!/usr/bin/env python3
"""Time and peak memory of hierarchical clustering, DBSCAN and the kNN-graph path, against the seed's approach.

Every case runs in a fresh child process and reports its own peak resident memory (``ru_maxrss``: what the
process really held, numpy buffers included; tracemalloc would miss them), the time of each stage, and the
baseline RSS after imports and data generation. Data: synthetic 512-d float32 features, ``N / 50`` Gaussian
clusters of 50 points (centres ``N(0, 2^2 I)``, points ``centre + N(0, I)``): within-cluster distances are about
32, between clusters about 64.

Cases (``--cases``):

- ``hier-ours``: condensed float64 distances block by block + fastcluster ``ward`` in place + the threshold
  search for ``N/50`` clusters, writing the float32 distance cache; ``hier-ours-cached``: the same reading the
  cache instead of computing the distances;
- ``hier-naive`` (the seed): ``scipy.spatial.distance.pdist`` (float64) + ``scipy.cluster.hierarchy.linkage``
  ``ward`` + ``fcluster``;
- ``dbscan-ours``: exact radius graph (pairs within eps) + scikit-learn DBSCAN on it (sparse precomputed);
- ``dbscan-naive`` (the seed): ``pdist`` + ``squareform`` + DBSCAN on the dense precomputed matrix;
- ``dbscan-sklearn``: scikit-learn DBSCAN on the features (``algorithm='brute'``), what a user would write;
- ``knn``: FAISS kNN graph (k=30; flat index up to 50,000 points, IVF above) + DBSCAN + HDBSCAN on it.

A peer whose estimated memory exceeds the memory available (``MemAvailable``, at most ``--budget-gb``) is skipped
with the reason; ratios are printed where both ran. Results: ``benchmarks/results/bench_clustering.json``.

Run (about 20 minutes on 2 cores): ``.venv/bin/python benchmarks/bench_clustering.py``.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

DIM = 512
PER_CLUSTER = 50
EPS = 36.0
MIN_SAMPLES = 5
KNN_K = 30
DEFAULT_SIZES = {
    "hier-ours": [10_000, 25_000, 50_000],
    "hier-ours-cached": [10_000, 25_000, 50_000],
    "hier-naive": [10_000, 25_000, 50_000],
    "dbscan-ours": [10_000, 25_000, 50_000],
    "dbscan-naive": [10_000, 25_000, 50_000],
    "dbscan-sklearn": [10_000, 25_000, 50_000],
    "knn": [50_000, 200_000],
}
PEERS = {"hier-naive": "hier-ours", "dbscan-naive": "dbscan-ours", "dbscan-sklearn": "dbscan-ours",
         "dbscan-ours": "knn"}
GB = 1024 ** 3


def synthetic(n, dim=DIM, seed=0):
    """``n`` points in ``n / 50`` Gaussian clusters, float32, and their cluster of origin."""
    rng = np.random.default_rng(seed)
    clusters = max(1, n // PER_CLUSTER)
    centers = rng.normal(scale=2.0, size=(clusters, dim)).astype(np.float32)
    truth = np.arange(n) % clusters
    x = centers[truth] + rng.normal(size=(n, dim)).astype(np.float32)
    return x, truth


def estimated_bytes(case, n):
    """Rough peak memory of a case (to skip what cannot fit)."""
    pairs = n * (n - 1) // 2
    base = n * DIM * 16 + (1 << 29)
    return {
        "hier-ours": 8 * pairs + base,
        "hier-ours-cached": 8 * pairs + base,
        "hier-naive": 16 * pairs + base,
        "dbscan-naive": 8 * pairs + 8 * n * n + base,
    }.get(case, base + n * 400)


def mem_available():
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------------------------
# Child side: one case, one size; prints one JSON line
# ------------------------------------------------------------------------------------------------------------------

def child(case, n, workdir):
    from sklearn.cluster import DBSCAN

    x, truth = synthetic(n)
    baseline = rss_bytes()
    stages = {}
    labels = None

    def stage(name, started):
        stages[name] = time.perf_counter() - started

    if case in ("hier-ours", "hier-ours-cached"):
        from clustering.distances import DistanceCache, FeatureSpace, cached_condensed_distances, features_fingerprint
        from clustering.hierarchical import find_threshold, linkage_matrix

        cache = DistanceCache(Path(workdir) / "cache")
        t = time.perf_counter()
        space = FeatureSpace(x, "euclidean")
        fingerprint = features_fingerprint(x)
        condensed = cached_condensed_distances(space, cache, f"bench/{n}", fingerprint)
        stage("distances" if case == "hier-ours" else "read cache", t)
        t = time.perf_counter()
        Z = linkage_matrix(condensed, "ward", in_place=True)
        del condensed
        stage("linkage", t)
        t = time.perf_counter()
        labels, _ = find_threshold(Z, n // PER_CLUSTER)
        stage("threshold", t)
    elif case == "hier-naive":
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        t = time.perf_counter()
        condensed = pdist(x)
        stage("distances", t)
        t = time.perf_counter()
        Z = linkage(condensed, method="ward")
        stage("linkage", t)
        t = time.perf_counter()
        labels = fcluster(Z, n // PER_CLUSTER, criterion="maxclust")
        stage("threshold", t)
    elif case == "dbscan-ours":
        from clustering.density import dbscan
        from clustering.distances import FeatureSpace, radius_graph

        t = time.perf_counter()
        graph = radius_graph(FeatureSpace(x, "euclidean"), EPS)
        stage("radius graph", t)
        t = time.perf_counter()
        labels = dbscan(graph, EPS, MIN_SAMPLES)
        stage("dbscan", t)
    elif case == "dbscan-naive":
        from scipy.spatial.distance import pdist, squareform

        t = time.perf_counter()
        square = squareform(pdist(x))
        stage("distances", t)
        t = time.perf_counter()
        labels = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed", algorithm="brute",
                        n_jobs=os.cpu_count()).fit_predict(square)
        stage("dbscan", t)
    elif case == "dbscan-sklearn":
        t = time.perf_counter()
        labels = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, algorithm="brute", n_jobs=os.cpu_count()).fit_predict(x)
        stage("dbscan", t)
    elif case == "knn":
        from clustering.density import dbscan, hdbscan
        from clustering.distances import FeatureSpace, knn_graph

        t = time.perf_counter()
        graph, info = knn_graph(FeatureSpace(x, "euclidean"), KNN_K)
        stage(f"knn graph ({info['index']})", t)
        t = time.perf_counter()
        labels = dbscan(graph, EPS, MIN_SAMPLES)
        stage("dbscan", t)
        t = time.perf_counter()
        hd = hdbscan(graph, min_cluster_size=MIN_SAMPLES, min_samples=MIN_SAMPLES)
        stage("hdbscan", t)
        from sklearn.metrics import adjusted_rand_score

        stages["hdbscan ARI vs truth"] = float(adjusted_rand_score(truth, hd))
    else:
        raise SystemExit(f"unknown case {case}")
    from sklearn.metrics import adjusted_rand_score

    np.save(Path(workdir) / f"labels-{case}-{n}.npy", np.asarray(labels), allow_pickle=False)
    result = {"case": case, "n": n, "d": DIM, "stages": stages,
              "seconds": sum(v for k, v in stages.items() if "ARI" not in k),
              "peak_rss_gb": rss_bytes() / GB, "baseline_rss_gb": baseline / GB,
              "ari_vs_truth": float(adjusted_rand_score(truth, labels)),
              "clusters": int(np.unique(np.asarray(labels)[np.asarray(labels) >= 0]).size)}
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------------------------
# Parent side
# ------------------------------------------------------------------------------------------------------------------

def threads_info():
    info = {"cpu_count": os.cpu_count()}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{"api": p.get("internal_api"), "threads": p.get("num_threads")} for p in threadpool_info()]
    except ImportError:
        pass
    try:
        import faiss

        info["faiss_omp_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    return info


def run_case(case, n, workdir, timeout, budget):
    need = estimated_bytes(case, n)
    available = min(mem_available(), budget)
    if need > 0.85 * available:
        return {"case": case, "n": n, "d": DIM, "skipped": f"needs about {need / GB:.1f} GB, "
                                                           f"{available / GB:.1f} GB available"}
    started = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, __file__, "--child", case, str(n), "--workdir", str(workdir)],
                             capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"case": case, "n": n, "d": DIM, "skipped": f"timed out after {timeout} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"case": case, "n": n, "d": DIM, "skipped": f"failed (exit {out.returncode}): {' | '.join(tail)}"}
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def agreement(workdir, case_a, case_b, n):
    """ARI between the labels of two cases (how far the kNN path is from exact DBSCAN)."""
    from sklearn.metrics import adjusted_rand_score

    a, b = (Path(workdir) / f"labels-{c}-{n}.npy" for c in (case_a, case_b))
    if not (a.is_file() and b.is_file()):
        return None
    return float(adjusted_rand_score(np.load(a), np.load(b)))


def describe(result):
    if "skipped" in result:
        return f"{result['case']:<17} n={result['n']:>7} d={result['d']}  skipped: {result['skipped']}"
    stages = ", ".join(f"{k} {v:.1f} s" if "ARI" not in k else f"{k} {v:.3f}" for k, v in result["stages"].items())
    return (f"{result['case']:<17} n={result['n']:>7} d={result['d']} metric=euclidean  "
            f"time {result['seconds']:7.1f} s  peak RSS {result['peak_rss_gb']:5.2f} GB "
            f"(baseline {result['baseline_rss_gb']:.2f} GB)  clusters {result['clusters']}  "
            f"ARI vs truth {result['ari_vs_truth']:.3f}  [{stages}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_SIZES), choices=list(DEFAULT_SIZES),
                        help="cases to run (default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="override the sizes of every case (default: 10K, 25K, 50K; kNN: 50K, 200K)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per child process (default: %(default)s)")
    parser.add_argument("--budget-gb", type=float, default=24.0,
                        help="memory budget for a case, capped by MemAvailable (default: %(default)s)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "bench_clustering.json"))
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.workdir)

    workdir = Path(tempfile.mkdtemp(prefix="bench_clustering_"))
    threads = threads_info()
    print(f"bench_clustering: d={DIM}, clusters of {PER_CLUSTER}, eps={EPS}, min_samples={MIN_SAMPLES}, "
          f"kNN k={KNN_K}, device=cpu, threads={threads}", flush=True)
    results = []
    started = time.perf_counter()
    try:
        order = [c for c in DEFAULT_SIZES if c in args.cases]
        for case in order:
            for n in (args.sizes or DEFAULT_SIZES[case]):
                result = run_case(case, n, workdir, args.timeout, args.budget_gb * GB)
                results.append(result)
                print(describe(result), flush=True)
        print("\nratios (peer / ours; > 1 means ours is faster or smaller):")
        index = {(r["case"], r["n"]): r for r in results if "skipped" not in r}
        ratios = []
        for peer, ours in PEERS.items():
            for n in sorted({r["n"] for r in results if r["case"] == peer}):
                a, b = index.get((peer, n)), index.get((ours, n))
                if a and b:
                    entry = {"peer": peer, "ours": ours, "n": n, "time_ratio": a["seconds"] / b["seconds"],
                             "memory_ratio": a["peak_rss_gb"] / b["peak_rss_gb"],
                             "label_agreement_ari": agreement(workdir, peer, ours, n)}
                    ratios.append(entry)
                    print(f"  {peer} vs {ours} n={n}: time x{entry['time_ratio']:.2f}, peak RSS "
                          f"x{entry['memory_ratio']:.2f}, label agreement ARI {entry['label_agreement_ari']:.3f}")
                elif (peer, n) not in index and any(r["case"] == peer and r["n"] == n for r in results):
                    print(f"  {peer} vs {ours} n={n}: peer not run ({next(r['skipped'] for r in results if r['case'] == peer and r['n'] == n)})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    from helpers.results import write_json

    write_json(args.output, {"benchmark": "bench_clustering", "d": DIM, "eps": EPS, "min_samples": MIN_SAMPLES,
                             "knn_k": KNN_K, "threads": threads, "device": "cpu", "results": results,
                             "ratios": ratios, "total_seconds": time.perf_counter() - started,
                             "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"\nsaved {args.output} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
