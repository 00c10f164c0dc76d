"""Exact search at the seed's scale with the torch backend, next to the seed's own A100 numbers.

The seed searched 11,600 BSDS500 attack queries (SimCLR v2 ResNet50 2x, 4096-d) against 500 originals + 500K
Flickr distractors on one A100 with FAISS GPU: Flat cosine 2.7 s, Flat L1 12.2 s. This reproduces the shapes with
synthetic planted data (queries = noisy copies of database rows) and times ``fast_search``'s exact torch backend
(``TorchFlatIndex``), best of ``--repeats``. The seed's numbers come from its README (another machine, FAISS GPU),
so the ratio is indicative only; both are printed with what they measured.

    python3 benchmarks/bench_search_seed_scale.py --device cuda
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fast_search.index import TorchFlatIndex  # noqa: E402
from helpers.device import device_description, resolve_device  # noqa: E402
from helpers.results import write_json  # noqa: E402

SEED_A100_SECONDS = {"cosine": 2.7, "L1": 12.2}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (only sensible with a small --n)")
    parser.add_argument("--n", type=int, default=500_500, help="database rows (default: %(default)s)")
    parser.add_argument("--d", type=int, default=4096, help="dimension (default: %(default)s)")
    parser.add_argument("--nq", type=int, default=11_600, help="queries (default: %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="neighbours (default: %(default)s)")
    parser.add_argument("--metrics", nargs="+", default=["cosine", "L1"], choices=["cosine", "L2", "L1"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_search_seed_scale.json"))
    args = parser.parse_args()
    import torch

    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    database = rng.standard_normal((args.n, args.d), dtype=np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    targets = rng.choice(args.n, size=args.nq, replace=False)
    queries = database[targets] + 0.02 * rng.standard_normal((args.nq, args.d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    setting = (f"n={args.n} d={args.d} nq={args.nq} k={args.k} device={device_description(device)} "
               f"torch={torch.__version__}")
    print(f"[setup] {setting}; data in {time.perf_counter() - started:.1f} s", flush=True)
    results = {"setting": setting, "n": args.n, "d": args.d, "nq": args.nq, "k": args.k, "runs": {}}
    for metric in args.metrics:
        index = TorchFlatIndex(metric, args.d, device=device)
        index.add(database)
        index.search(queries[:256], args.k)  # warm-up (kernels, allocator)
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            _, ids = index.search(queries, args.k)
            times.append(time.perf_counter() - start)
        recall1 = float(np.mean(ids[:, 0] == targets))
        best = min(times)
        run = {"metric": metric, "seconds": best, "queries_per_s": args.nq / best, "recall@1": recall1,
               "seed_a100_faiss_gpu_seconds": SEED_A100_SECONDS.get(metric)}
        results["runs"][metric] = run
        seed_shapes = (args.n, args.d, args.nq) == (500_500, 4096, 11_600)
        seed = SEED_A100_SECONDS.get(metric) if seed_shapes else None
        versus = f"; the seed's A100 FAISS GPU: {seed} s -> {seed / best:.1f}x" if seed else ""
        print(f"Flat {metric:6s} torch backend: {best:.3f} s ({args.nq / best:,.0f} q/s, recall@1 {recall1:.4f})"
              f"{versus}  ({setting})", flush=True)
        del index
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write_json(args.output, results)
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    main()
