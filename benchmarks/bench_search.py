#!/usr/bin/env python3
"""Benchmark of fast_search on a synthetic database with planted near-duplicate queries.

Part A, exact search efficiency: the achieved GFLOP/s of Flat inner-product (cosine) search, 2*n*d*nq flops per
search, against the machine's own float32 matmul (sgemm) rate measured in the same run on the same shapes
(numpy and torch, ``nq x chunk x d`` products covering the database; the better one is the reference). Target:
>= 70 %. Peers a user would otherwise pick are run side by side: numpy brute force (matmul + argpartition) and, with
``--sklearn``, scikit-learn's brute-force NearestNeighbors.

Part B, approximate search: IVF (nlist x nprobe sweep), optionally HNSW (efSearch sweep, ``--hnsw``) and IVF-PQ with
exact re-ranking (``--pq``); the fastest setting whose recall@1 is >= 0.99 x Flat's, and its speed-up over Flat.
Target: >= 5x.

``--device cuda`` runs the same on a GPU: the exact torch backend against FAISS (FAISS GPU when installed, otherwise
FAISS on CPU, labelled so). Every number is printed next to n, d, nq, k, metric, threads and device; the JSON goes to
``benchmarks/results/bench_search[_quick][_cuda].json``.

    python3 benchmarks/bench_search.py            # 500K x 512, 1000 queries, 2 threads (~5-10 min on 2 cores)
    python3 benchmarks/bench_search.py --quick    # 50K x 256, 500 queries (< 1 min)
    python3 benchmarks/bench_search.py --device cuda
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the scripts do (fast_search.cli)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from fast_search import synthetic as S  # noqa: E402
from fast_search.index import make_index, prepare_vectors  # noqa: E402
from fast_search.metrics import ann_recall, recall_at_k  # noqa: E402
from helpers.results import write_json  # noqa: E402

METRIC = "cosine"  # inner product on L2-normalised vectors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small version: 50K x 256, 500 queries")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for FAISS, torch and numpy "
                                                               "(default: %(default)s)")
    parser.add_argument("--n", type=int, default=None, help="database rows (default 500000, quick 50000)")
    parser.add_argument("--d", type=int, default=None, help="dimension (default 512, quick 256)")
    parser.add_argument("--nq", type=int, default=None, help="queries (default 1000, quick 500)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 3, quick 5)")
    parser.add_argument("--nlists", type=int, nargs="+", default=None,
                        help="IVF list counts (default 1024 2048, quick 256)")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128],
                        help="nprobe values, swept until recall qualifies (default: %(default)s)")
    parser.add_argument("--hnsw", action="store_true", help="also HNSW32 over efSearch (slow to build on CPU)")
    parser.add_argument("--pq", action="store_true", help="also IVF-PQ (4-bit fast scan) with exact re-ranking")
    parser.add_argument("--sklearn", action="store_true", help="also scikit-learn brute-force NearestNeighbors")
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/bench_search*.json)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.n = args.n or (50_000 if quick else 500_000)
    args.d = args.d or (256 if quick else 512)
    args.nq = args.nq or (500 if quick else 1000)
    args.repeats = args.repeats or (5 if quick else 3)
    args.nlists = args.nlists or ([256] if quick else [1024, 2048])
    return args


def set_threads(count):
    import faiss
    import torch

    faiss.omp_set_num_threads(count)
    torch.set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(count)  # numpy's BLAS
    except ImportError:
        pass


def best_time(function, repeats, sync=None):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = function()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return min(times), times, out


def make_data(n, d, nq, seed=0):
    """Clustered vectors (clusters of ~500 rows) and noisy copies of nq of them, L2-normalised."""
    db = S.clustered_database(n, d, n_clusters=max(1, n // 500), spread=0.2, seed=seed)
    # noise calibrated so that exact search finds ~95 % of the originals at d=512 (the seed's Flat recall@1 was
    # 0.949); the distance gaps of such data shrink like d^(-1/4), hence the scaling
    queries, targets = S.planted_queries(db, nq, noise=0.9 * (d / 512) ** 0.25, seed=seed + 1)
    return prepare_vectors(db, METRIC), prepare_vectors(queries, METRIC), targets


def faiss_blas_sgemm():
    """``cblas_sgemm`` of the BLAS bundled with the faiss-cpu wheel (the one FAISS's Flat search calls), through
    ctypes, or None when it cannot be found (e.g. a conda FAISS linked to MKL)."""
    import ctypes
    import glob

    import faiss

    found = glob.glob(os.path.join(os.path.dirname(faiss.__file__), "..", "faiss_cpu.libs", "libopenblas*.so*"))
    if not found:
        return None
    try:
        function = ctypes.CDLL(found[0]).cblas_sgemm
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                              ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    function.restype = None
    return function


def matmul_functions(db, queries, device, blocks=(1024, 4096, 16384), rows=131072):
    """Float32 matmuls of the search's shapes, ``nq x block x d`` products over ``rows`` database rows (a prefix, to
    keep the run short; the rate per flop does not depend on it): the reference is the best of numpy, torch and
    the BLAS bundled with FAISS over the block sizes. Returns ``({name: (function, flops)}, synchronise)``."""
    import torch

    sub = np.ascontiguousarray(db[:rows])
    nq, d = len(queries), sub.shape[1]
    flops = 2.0 * sub.shape[0] * d * nq
    functions = {}
    cblas = faiss_blas_sgemm() if device.type == "cpu" else None

    def numpy_mm(block):
        out = np.empty((nq, block), dtype=np.float32)

        def run():
            for start in range(0, len(sub), block):
                chunk = sub[start:start + block]
                np.matmul(queries, chunk.T, out=out[:, : len(chunk)])
        return run

    def cblas_mm(block):
        out = np.empty((nq, block), dtype=np.float32)

        def run():  # row-major C[nq, m] = Q[nq, d] @ X[m, d]^T
            for start in range(0, len(sub), block):
                m = min(block, len(sub) - start)
                cblas(101, 111, 112, nq, m, d, 1.0, queries.ctypes.data, d, sub[start:].ctypes.data, d, 0.0,
                      out.ctypes.data, m)
        return run

    tdb = torch.from_numpy(sub).to(device)
    tq = torch.from_numpy(queries).to(device)

    def torch_mm(block):
        out = torch.empty((nq, block), device=device)

        def run():
            for start in range(0, tdb.shape[0], block):
                chunk = tdb[start:start + block]
                torch.mm(tq, chunk.T, out=out[:, : chunk.shape[0]])
        return run

    for block in blocks:
        if device.type == "cpu":
            functions[f"numpy sgemm {nq}x{block}x{d}"] = (numpy_mm(block), flops)
            if cblas is not None:
                functions[f"FAISS's BLAS sgemm {nq}x{block}x{d}"] = (cblas_mm(block), flops)
        functions[f"torch sgemm {nq}x{block}x{d}"] = (torch_mm(block), flops)
    if cblas is not None:  # check the ctypes call against numpy once
        check = np.empty((nq, 8), dtype=np.float32)
        cblas(101, 111, 112, nq, 8, d, 1.0, queries.ctypes.data, d, sub.ctypes.data, d, 0.0, check.ctypes.data, 8)
        np.testing.assert_allclose(check, queries @ sub[:8].T, rtol=1e-3, atol=1e-3)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return functions, sync


def numpy_brute_force(db, queries, k, chunk=16384):
    """What a user would write: chunked matmul + argpartition, merged top-k."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(db), chunk):
        scores = queries @ db[start:start + chunk].T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, axis=1)


def search_entry(name, index, queries, k, repeats, flops, targets, exact_ids, idents):
    best, times, (_, ids) = best_time(lambda: index.search(queries, k), repeats)
    entry = {"name": name, "backend": index.backend, "search_time": best, "search_times": times,
             "qps": len(queries) / best, "gflops": flops / best / 1e9,
             "recall@1": recall_at_k(ids, idents, [str(t) for t in targets], 1),
             f"recall@{k}": recall_at_k(ids, idents, [str(t) for t in targets], k)}
    if exact_ids is not None:
        entry["ann_recall@1"] = ann_recall(ids, exact_ids, 1)
    return entry, ids


def main(argv=None):
    args = parse_args(argv)
    import faiss

    from helpers.device import device_description, resolve_device
    from helpers.experiment import environment_info

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    set_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    where = f"n={args.n} d={args.d} nq={args.nq} k={args.k} metric={METRIC} threads={threads} " \
            f"device={device_description(device)}"
    print(f"[setup] {where}")
    started = time.perf_counter()
    db, queries, targets = make_data(args.n, args.d, args.nq)
    idents = [str(i) for i in range(args.n)]
    print(f"[setup] synthetic clustered database and planted queries in {time.perf_counter() - started:.1f} s")
    flops = 2.0 * args.n * args.d * args.nq
    report = {"config": vars(args), "where": where, "environment": environment_info(device),
              "flops_per_search": flops}

    # -- Part A: exact search against the machine's matmul rate -------------------------------------------------
    # all contenders run in turn within each repeat and the best time of each is kept, so a busy machine slows
    # them alike
    mm, sync = matmul_functions(db, queries, device)
    flat_faiss = make_index("Flat", METRIC, args.d, device=device, backend="faiss")
    flat_faiss.add(db)
    flat_torch = make_index("Flat", METRIC, args.d, device=device, backend="torch")
    flat_torch.add(db)
    contenders = {name: function for name, (function, _) in mm.items()}
    contenders["Flat (FAISS)"] = lambda: flat_faiss.search(queries, args.k)
    contenders["Flat (torch backend)"] = lambda: flat_torch.search(queries, args.k)
    if device.type == "cuda":  # warm-up: CUDA context, cuBLAS handles
        for function in contenders.values():
            function()
            sync()
    times = {name: [] for name in contenders}
    outputs = {}
    for _ in range(args.repeats):
        for name, function in contenders.items():
            start = time.perf_counter()
            outputs[name] = function()
            sync()
            times[name].append(time.perf_counter() - start)
    rates = {name: mm_flops / min(times[name]) / 1e9 for name, (_, mm_flops) in mm.items()}
    reference = max(rates.values())
    for name, rate in rates.items():
        print(f"[A] {name} blocks over {min(args.n, 131072)} rows: {rate:7.1f} GFLOP/s  ({where})")
    exact_ids = outputs["Flat (FAISS)"][1]
    targets_s = [str(t) for t in targets]
    exact = {}
    for key, name, index in (("faiss", "Flat (FAISS)", flat_faiss), ("torch", "Flat (torch backend)", flat_torch)):
        best = min(times[name])
        ids = outputs[name][1]
        exact[key] = {"name": name, "backend": index.backend, "search_time": best, "search_times": times[name],
                      "qps": args.nq / best, "gflops": flops / best / 1e9,
                      "recall@1": recall_at_k(ids, idents, targets_s, 1),
                      f"recall@{args.k}": recall_at_k(ids, idents, targets_s, args.k)}
    exact["torch"]["ann_recall@1"] = ann_recall(outputs["Flat (torch backend)"][1], exact_ids, 1)
    if device.type == "cpu":
        best, _, ids = best_time(lambda: numpy_brute_force(db, queries, args.k), 1)
        exact["numpy"] = {"name": "numpy brute force (matmul+argpartition)", "backend": "numpy", "search_time": best,
                          "qps": args.nq / best, "gflops": flops / best / 1e9,
                          "recall@1": recall_at_k(ids, idents, targets_s, 1)}
        if args.sklearn:
            from sklearn.neighbors import NearestNeighbors

            model = NearestNeighbors(n_neighbors=args.k, algorithm="brute", metric="cosine").fit(db)
            best, _, (_, ids) = best_time(lambda: model.kneighbors(queries), 1)
            exact["sklearn"] = {"name": "sklearn NearestNeighbors(brute, cosine)", "backend": "sklearn",
                                "search_time": best, "qps": args.nq / best, "gflops": flops / best / 1e9,
                                "recall@1": recall_at_k(ids, idents, targets_s, 1)}
    for key, entry in exact.items():
        entry["fraction_of_sgemm"] = entry["gflops"] / reference
        print(f"[A] {entry['name']:<40} [{entry['backend']}] {entry['search_time']:8.3f} s  {entry['qps']:9.0f} q/s  "
              f"{entry['gflops']:7.1f} GFLOP/s = {100 * entry['fraction_of_sgemm']:5.1f} % of sgemm  "
              f"recall@1 {entry['recall@1']:.4f}  ({where})")
    faiss_flat = exact["faiss"]
    print(f"[A] FAISS Flat reaches {100 * faiss_flat['fraction_of_sgemm']:.1f} % of the measured sgemm rate "
          f"(target >= 70 %); torch backend / FAISS speed: {faiss_flat['search_time'] / exact['torch']['search_time']:.2f}"
          f"x" + (f"; FAISS / numpy brute force speed: {exact['numpy']['search_time'] / faiss_flat['search_time']:.2f}x"
                  if "numpy" in exact else ""))
    report["sgemm_gflops"] = rates
    report["sgemm_times"] = {name: times[name] for name in mm}
    report["exact"] = exact

    # -- Part B: approximate indexes against Flat ---------------------------------------------------------------
    flat_best = min(exact[key]["search_time"] for key in ("faiss", "torch"))
    flat_recall = faiss_flat["recall@1"]
    needed = 0.99 * flat_recall
    print(f"[B] Flat recall@1 {flat_recall:.4f}: an index qualifies at recall@1 >= {needed:.4f}; fastest exact "
          f"search {flat_best:.3f} s")
    settings = []
    finalists = []  # (entry, index) of the fastest qualifying setting of each index, kept for the final check

    def sweep(factory, param, values, train_size=None, extra=None):
        index = make_index(factory, METRIC, args.d, device=device, backend="faiss", train_size=train_size)
        start = time.perf_counter()
        index.train(db)
        train = time.perf_counter() - start
        start = time.perf_counter()
        index.add(db)
        add = time.perf_counter() - start
        print(f"[B] {factory}: train {train:.1f} s (on {train_size or args.n} rows), add {add:.1f} s "
              f"[{index.backend}]")
        qualified = 0
        for value in values:
            if extra:
                extra(index)
            index.set_search_params(**{param: value})
            entry, _ = search_entry(f"{factory} {param}={value}", index, queries, args.k, args.repeats, flops,
                                    targets, exact_ids, idents)
            entry.update(factory=factory, param=param, value=value, train_time=train, add_time=add,
                         qualifies=entry["recall@1"] >= needed, speedup=flat_best / entry["search_time"])
            settings.append(entry)
            print(f"[B] {entry['name']:<36} {entry['search_time']:8.3f} s  {entry['qps']:9.0f} q/s  recall@1 "
                  f"{entry['recall@1']:.4f}  ANN recall@1 {entry['ann_recall@1']:.4f}  speed-up {entry['speedup']:6.1f}x"
                  f"{'  qualifies' if entry['qualifies'] else ''}  ({where})")
            qualified += entry["qualifies"]
            if qualified >= 2:  # larger values only get slower
                break
        mine = [entry for entry in settings if entry["factory"] == factory and entry["qualifies"]]
        if mine:
            finalists.append((min(mine, key=lambda e: e["search_time"]), index, extra))
        else:
            index.close()

    for nlist in args.nlists:
        nprobes = [p for p in args.nprobes if p <= nlist]
        sweep(f"IVF{nlist},Flat", "nprobe", nprobes, train_size=min(args.n, 65536))
    if args.pq:
        nlist = args.nlists[0]

        def rerank(index, factor=64):  # exact re-ranking of the k * factor best PQ candidates
            index.index.k_factor = factor

        sweep(f"IVF{nlist},PQ{args.d // 4}x4fs,RFlat", "nprobe", [p for p in args.nprobes if p <= nlist],
              train_size=min(args.n, 65536), extra=rerank)
    if args.hnsw:
        sweep("HNSW32", "efsearch", [16, 32, 64, 128, 256, 512])
    report["flat_recall@1"] = flat_recall
    report["flat_time"] = flat_best
    report["approximate"] = settings
    if finalists:
        # the machine's load changes between the sweeps, so the speed-up is measured again with Flat and the best
        # setting of each index searched in turn, best of args.repeats each
        contenders = [("Flat (FAISS)", flat_faiss, None, {}), ("Flat (torch backend)", flat_torch, None, {})]
        contenders += [(entry["name"], index, extra, {entry["param"]: entry["value"]})
                       for entry, index, extra in finalists]
        final = {name: [] for name, *_ in contenders}
        for _ in range(args.repeats):
            for name, index, extra, params in contenders:
                if extra:
                    extra(index)
                index.set_search_params(**params)
                start = time.perf_counter()
                index.search(queries, args.k)
                final[name].append(time.perf_counter() - start)
        flat_final = min(min(final["Flat (FAISS)"]), min(final["Flat (torch backend)"]))
        for entry, _, _ in finalists:
            entry["final_search_time"] = min(final[entry["name"]])
            entry["final_speedup"] = flat_final / entry["final_search_time"]
            print(f"[B] interleaved with Flat ({flat_final:.3f} s): {entry['name']:<32} "
                  f"{entry['final_search_time']:.3f} s = {entry['final_speedup']:.1f}x faster  ({where})")
        best = max((entry for entry, _, _ in finalists), key=lambda e: e["final_speedup"])
        report["final_times"] = final
        report["best"] = best
        print(f"[B] fastest setting with recall@1 >= 0.99 x Flat: {best['name']} [{best['backend']}]: "
              f"{best['final_search_time']:.3f} s vs Flat {flat_final:.3f} s = {best['final_speedup']:.1f}x faster "
              f"(target >= 5x), recall@1 {best['recall@1']:.4f} vs {flat_recall:.4f}  ({where})")
        for _, index, _ in finalists:
            index.close()
    else:
        report["best"] = None
        print("[B] no setting reached recall@1 >= 0.99 x Flat; widen --nprobes")
    flat_faiss.close()
    flat_torch.close()
    report["total_time"] = time.perf_counter() - started
    name = "bench_search" + ("_quick" if args.quick else "") + ("_cuda" if device.type == "cuda" else "")
    target = Path(args.output) if args.output else ROOT / "benchmarks" / "results" / f"{name}.json"
    write_json(target, report)
    print(f"[done] {report['total_time']:.0f} s; JSON: {target}")
    return report


if __name__ == "__main__":
    main()
