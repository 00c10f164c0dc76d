"""Argument parsers of the search scripts (``search_experiment.py``, ``process.py``, ``explore_neighbors.py``);
they run through :func:`helpers.cli.run_cli`."""
import argparse

from helpers.cli import add_common_arguments, add_max_pixels_argument, passive_openmp_wait, positive_int

passive_openmp_wait()  # before FAISS is loaded (by .experiment below)

from helpers.paths import FEATURES_DIR, NEIGHBORS_DIR, RESULTS_DIR  # noqa: E402

from .experiment import EXPERIMENTS  # noqa: E402
from .index import BACKENDS, METRICS  # noqa: E402



def _data_arguments(parser, several_algos, required=True):
    parser.add_argument("--algo", nargs="+" if several_algos else None, required=required, metavar="ALGO",
                        help="algorithm name(s) of the features, as given to extract_features.py (e.g. "
                             "'SimCLR v2 ResNet50 2x', 'Dhash 64 bits')" + ("; several give one section each"
                                                                           if several_algos else ""))
    parser.add_argument("--main-dataset", required=required,
                        help="dataset of the database originals (e.g. BSDS500_original, Kaggle_templates)")
    parser.add_argument("--query-dataset", required=required,
                        help="dataset of the queries, e.g. attacked copies (BSDS500_attacks, Kaggle_memes)")
    parser.add_argument("--distractor-dataset", default=None,
                        help="dataset added to the database as distractors (e.g. Flickr500K; default: none)")
    parser.add_argument("--ground-truth", default=None, metavar="FILE",
                        help="ground-truth CSV (query,reference[,attack]; DISC21's query_id,reference_id accepted); "
                             "default: ground_truth.csv in the query folder, else the <id>_<attack> file names "
                             "(written to the query folder as ground_truth.csv). See Datasets/README.md")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto: FAISS on CPU; on CUDA FAISS GPU when installed, else the exact torch backend "
                             "for Flat L2/cosine/L1; faiss or torch force one (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="queries per search batch (bounds memory; default: 8192 FAISS, 4096/1024 torch "
                             "GPU/CPU)")
    parser.add_argument("--features-root", default=str(FEATURES_DIR),
                        help="root of the feature store (default: Features/ in the repository)")


def search_experiment_parser():
    parser = argparse.ArgumentParser(
        prog="search_experiment.py",
        description="Nearest-neighbour search experiment: for each algorithm, index and metric, recall@k "
                    "(per attack too), uAP, recall at 90%% precision and search time of the queries against the "
                    "database; writes Results/NAME/results.json and prints a recall table.")
    parser.add_argument("name", help="experiment name: results go to RESULTS_ROOT/NAME/ (refused if it exists "
                                     "and is finished, unless --force)")
    _data_arguments(parser, several_algos=True)
    parser.add_argument("--experiment", default="k", choices=EXPERIMENTS,
                        help="metrics: Flat with each metric; k: Flat over --ks; nprobe: IVF over --nprobes vs "
                             "Flat; efsearch: HNSW over --efsearch vs Flat; index: the --index factory strings "
                             "(default: %(default)s)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=None,
                        help="metrics (default: L2 L1 cosine for 'metrics', else L2 cosine; binary hashes always "
                             "use hamming)")
    parser.add_argument("--ks", nargs="+", type=positive_int, default=None,
                        help="numbers of neighbours k (default: 1 2 3 4 5 10 20 for 'k', else 1; sweeps use the "
                             "first)")
    parser.add_argument("--nprobes", nargs="+", type=positive_int, default=None,
                        help="IVF lists visited per query (default for 'nprobe': 1 5 10 20 50 100 200)")
    parser.add_argument("--efsearch", nargs="+", type=positive_int, default=None,
                        help="HNSW efSearch values (default for 'efsearch': 16 32 64 128 256)")
    parser.add_argument("--index", nargs="+", default=None, metavar="FACTORY",
                        help="FAISS factory strings: Flat, IVF4096,Flat, HNSW32, IVF4096,PQ64 ... (binary: BFlat, "
                             "BIVF4096, BHNSW32; float strings are translated for hashes). For 'nprobe' and "
                             "'efsearch' the first replaces the default IVF{10*sqrt(n)},Flat / HNSW32")
    parser.add_argument("--score-norm-dataset", default=None, metavar="D",
                        help="background dataset for score normalisation (SSCD's uAP-SN): each query's distances "
                             "minus BETA x its distance to its K-th nearest background image give muap_sn "
                             "(default: none)")
    parser.add_argument("--score-norm-k", type=positive_int, default=1, metavar="K",
                        help="neighbour rank in the background set for --score-norm-dataset (default: %(default)s)")
    parser.add_argument("--score-norm-beta", type=float, default=1.0, metavar="BETA",
                        help="weight of the background distance for --score-norm-dataset (default: %(default)s)")
    parser.add_argument("--save-neighbors", action="store_true",
                        help="write each query's neighbours (rank, image, distance, correct, tie group) of every "
                             "run and point to RESULTS_ROOT/NAME/neighbors/*.csv.gz (format: "
                             "fast_search/neighbor_table.py; explore_neighbors.py --neighbors-file draws a gallery from it)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="time each search this many times and keep the best (default: %(default)s)")
    parser.add_argument("--train-size", type=positive_int, default=None,
                        help="train IVF/PQ indexes on at most this many database rows, drawn at random (default: "
                             "all; FAISS samples up to 256 per IVF list)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for FAISS and torch (default: all cores)")
    parser.add_argument("--results-root", default=str(RESULTS_DIR),
                        help="folder of the experiment folders (default: Results/ in the repository)")
    add_common_arguments(parser)
    return parser


def process_parser():
    parser = argparse.ArgumentParser(
        prog="process.py",
        description="Plot the results of a search experiment (Results/NAME/results.json): search time vs recall "
                    "(Flat metrics, k sweep annotated with k, IVF/HNSW curves vs Flat points), recall per attack "
                    "and precision-recall curves, as PNG and PDF in Results/NAME/.")
    parser.add_argument("name", help="experiment name (a folder of RESULTS_ROOT)")
    parser.add_argument("--results-root", default=str(RESULTS_DIR),
                        help="folder of the experiment folders (default: Results/ in the repository)")
    parser.add_argument("--log-y", action="store_true", help="search time on a logarithmic axis")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                        help="figure formats (default: png pdf)")
    add_common_arguments(parser, device=False, seed=False, force=False)
    return parser


def explore_neighbors_parser():
    parser = argparse.ArgumentParser(
        prog="explore_neighbors.py",
        description="Neighbour gallery: for each query a montage (query | its k nearest neighbours | its target) "
                    "under NEIGHBORS_ROOT/NAME/Correct, Incorrect or NoOriginal, and an index.html listing them "
                    "(incorrect first, with distances).")
    parser.add_argument("--name", required=True, help="gallery name: NEIGHBORS_ROOT/NAME/ (refused if it exists, "
                                                      "unless --force)")
    _data_arguments(parser, several_algos=False, required=False)
    parser.add_argument("--neighbors-file", default=None, metavar="FILE",
                        help="draw the gallery from a neighbour table (neighbors/*.csv.gz written by "
                             "search_experiment.py --save-neighbors, or a gallery's neighbors.csv.gz) instead of "
                             "searching; --algo and the datasets are then not needed")
    parser.add_argument("--metric", default="cosine", choices=METRICS,
                        help="distance (default: %(default)s; hashes always use hamming)")
    parser.add_argument("--index", dest="factory", default="Flat", metavar="FACTORY",
                        help="FAISS factory string of the index searched (default: %(default)s, exact)")
    parser.add_argument("--k", type=positive_int, default=10, help="neighbours shown per query (default: %(default)s)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="at most this many queries, incorrect ones first (default: all)")
    parser.add_argument("--correct-within", type=positive_int, default=1,
                        help="a query is Correct when its target is among this many nearest neighbours "
                             "(default: %(default)s)")
    parser.add_argument("--tile", type=positive_int, default=160, help="montage tile size in pixels (default: "
                                                                    "%(default)s)")
    parser.add_argument("--neighbors-root", default=str(NEIGHBORS_DIR),
                        help="folder of the galleries (default: Neighbors/ in the repository)")
    add_max_pixels_argument(parser)
    add_common_arguments(parser, seed=False)
    return parser
