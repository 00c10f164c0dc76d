"""How much tie-breaking moves recall@1 of perceptual hashes on real photos (the seed's BSDS500 benchmark).

The queries are the seed's 58 attacks of the 200 BSDS500 test photos (11,600 images, written with their
``ground_truth.csv`` by ``generate_attacks.py``), the database all 500 BSDS500 photos. For each hash, recall@1
is reported four ways: in the index's row order (what the toolkit reported before ties were made explicit: FAISS
returns equal distances lowest row first), pessimistic (DISC21's convention, the headline now), expected under
random tie-breaking, and optimistic. Usage::

    python3 benchmarks/bench_ties.py [--bsds ../shared/datasets/BSDS500] [--work bench_out/ties] [--workers 2]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

HASHES = ["Dhash 64 bits", "Phash 64 bits", "Ahash 64 bits", "Whash 64 bits", "Colorhash 42 bits"]


def main(argv=None):
    from data_retrieval.generate_attacks import generate_attacks
    from extractor.extract import extract_features
    from fast_search import metrics as M
    from fast_search.search import Experiment

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bsds", default=str(REPO_ROOT.parent / "shared" / "datasets" / "BSDS500"))
    parser.add_argument("--work", default=str(REPO_ROOT / "bench_out" / "ties"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "bench_ties.json"))
    args = parser.parse_args(argv)
    bsds, work = Path(args.bsds), Path(args.work)
    originals = work / "originals"  # all 500 photos, linked flat
    if not originals.is_dir():
        originals.mkdir(parents=True)
        for split in ("train", "val", "test"):
            for photo in sorted((bsds / split).glob("*.jpg")):
                (originals / photo.name).symlink_to(photo.resolve())
    attacks = work / "attacks"
    started = time.time()
    generate_attacks(bsds / "test", attacks, workers=args.workers, progress=False)
    print(f"attacks ready in {time.time() - started:.0f} s", flush=True)
    features = work / "Features"
    extract_features(HASHES, [str(originals), str(attacks)], out=features, progress=False, workers=args.workers)
    results = {"setup": {"database": "500 BSDS500 photos", "queries": "58 seed attacks of the 200 test photos",
                         "k": 1, "metric": "hamming", "device": "cpu", "threads": os.cpu_count()}, "hashes": {}}
    for algorithm in HASHES:
        exp = Experiment(algorithm, str(originals), str(attacks), features_root=features, device="cpu")
        exp.set_index("Flat", "hamming")
        exp.search(k=1)
        row_order = M.hits_at_k(exp.I[:, :1], exp.identifiers_db, exp.identifiers_query, 1)
        pes, expected, opt, unresolved = M.tie_aware_hits(exp.D, exp.I, exp.identifiers_db, exp.identifiers_query,
                                                          1, exp.n)
        positive = exp.has_original
        row = {"n": exp.n, "nq": exp.nq, "row_order": float(row_order[positive].mean()),
               "pessimistic": float(pes[positive].mean()), "expected": float(expected[positive].mean()),
               "optimistic": float(opt[positive].mean()), "unresolved_ties": int(unresolved.sum()),
               "queries_with_a_tie_at_rank_1": int(((exp.D[:, 0] == exp.D[:, 1]) & (exp.I[:, 1] >= 0)).sum())}
        exp.close()
        results["hashes"][algorithm] = row
        print(f"{algorithm:>18}: n={row['n']} nq={row['nq']} k=1 hamming | recall@1 row order {row['row_order']:.4f}"
              f"  pessimistic {row['pessimistic']:.4f}  expected {row['expected']:.4f}  optimistic "
              f"{row['optimistic']:.4f}  (queries with a tie at rank 1: {row['queries_with_a_tie_at_rank_1']})",
              flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
