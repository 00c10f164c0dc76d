#!/usr/bin/env python3
"""Neural feature extraction speed: the full pipeline (decode + preprocess + model) against the model alone.

What is timed, for one registry model (``ResNet50 1x`` with random weights by default) over BSDS500/test
(200 JPEGs of 481x321; the list is cycled when ``--images`` asks for more, so the GPU runs long enough):

- **model only**: ``Embedder.forward`` on pre-made input tensors already on the device, same batch size,
  precision and memory layout as the pipeline (the upper bound of the pipeline);
- **decode + preprocess only**: the DataLoader alone (``helpers.image_io.load_image`` + resize/crop to uint8 in
  ``--workers`` processes), no model;
- **decode paths**: ``cpu`` (PIL decode + LANCZOS in the workers) and, on CUDA, ``gpu`` (:mod:`extractor.gpu_decode`:
  nvjpeg for a share of the JPEGs, ``--nvjpeg-share``, the workers' libjpeg for the rest, exact LANCZOS on the
  device), each timed alone and in the full pipeline; the nvjpeg-vs-libjpeg difference of the model inputs and of
  the features over the folder's files is printed;
- **full pipeline (ours)**: the DataLoader feeding the model exactly as ``extract_features`` does (uint8 batches,
  pinned memory and non-blocking copies on CUDA, normalisation on the device, channels_last on CUDA, autocast
  ``--precision``, inference mode, outputs kept on the device and copied once at the end); timed from the first
  batch on (steady state; worker start-up reported separately);
- **extract_features end to end**: the production function writing a feature store (chunks, names, meta);
- **peer: the seed's loop**: torchvision ``Compose`` (resize, crop, ``ToTensor``, ``Normalize``) in the same number of
  workers, float32 batches, ``images.to(device)``, an fp32 model under ``no_grad``, ``.cpu().numpy()`` after every
  batch; its features are compared with ours (they must agree in fp32).

Reported: images/s of each (wall time; "steady" from the first batch on, "overall" from the loader's creation; on
CPU without workers also images per CPU-second of this process, which a shared machine disturbs less), the ratio
full pipeline / model only per decode path (target >= 0.8 on GPU) and ours / peer (the fastest path). The peer's
model is warmed up before its timing, as ours is.
Results: ``benchmarks/results/bench_extraction_<cpu|cuda>.json``.

Run on CPU (short: 64 images, batch 16): ``.venv/bin/python benchmarks/bench_extraction.py --device cpu``
On a GPU: ``.venv/bin/python benchmarks/bench_extraction.py --device cuda`` (defaults there: 16384 images,
batch 256, bf16, min(16, CPUs - 1) workers, both decode paths).
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from helpers.cli import add_common_arguments, parse_args, resolved_config  # noqa: E402
from helpers.device import device_description, resolve_device  # noqa: E402
from helpers.image_io import list_images  # noqa: E402
from helpers.log import setup_logging  # noqa: E402
from helpers.results import write_json  # noqa: E402

DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "BSDS500" / "test"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--algo", default="ResNet50 1x", help="registry model (default: %(default)s)")
    parser.add_argument("--weights", default="random", help="model weights (default: %(default)s)")
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="image folder (default: %(default)s)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per measurement, cycling the folder (default: 64 on CPU, 4096 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 256 on CUDA")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers (default: extract_features' choice for the device)")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                        help="autocast precision of ours (default: fp32 on CPU, bf16 on CUDA; the peer is fp32)")
    parser.add_argument("--decode", default=None, choices=["cpu", "gpu", "both"],
                        help="input path(s) timed: cpu (PIL in the workers), gpu (nvjpeg + exact LANCZOS on the "
                             "device) or both (default: both on CUDA, cpu otherwise)")
    parser.add_argument("--nvjpeg-share", type=float, nargs="+", default=None, metavar="F",
                        help="shares of the JPEGs decoded by nvjpeg on the gpu path (the rest by the workers, "
                             "resized on the device); each is timed (default: 0, the module's default, 1)")
    parser.add_argument("--skip-peer", action="store_true", help="do not run the seed-style loop")
    parser.add_argument("--out", default=None,
                        help="JSON results file (default: benchmarks/results/bench_extraction_<device>.json)")
    add_common_arguments(parser, seed=False, force=False)
    return parser


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall time and this process's CPU time (on a shared CPU, wall time also counts other jobs' turns)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, n):
        """``(images per wall second, images per CPU second of this process)``."""
        return n / (time.perf_counter() - self.wall), n / max(time.process_time() - self.cpu, 1e-9)


def time_model_only(embedder, input_size, batch_size, n_batches, device):
    """``(images/s, images per CPU-s)`` of ``embedder.forward`` on a pre-made input batch on the device."""
    x = torch.randn(batch_size, 3, *input_size, device=device)
    if embedder.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        embedder.forward(x)
    _sync(device)
    clock = Clock()
    for _ in range(n_batches):
        embedder.forward(x)
    _sync(device)
    return clock.rates(batch_size * n_batches)


def _batches(n, batch_size):
    return [list(range(start, min(n, start + batch_size))) for start in range(0, n, batch_size)]


def time_loader(paths, item_fn, batch_size, workers, device, consume=None):
    """``((images/s, images per CPU-s) after the first batch, seconds to the first batch, outputs, overall images/s
    from the loader's creation)``."""
    from extractor.loading import make_loader

    loader = make_loader(paths, item_fn, _batches(len(paths), batch_size), workers, device)
    prepare = getattr(item_fn, "prepare_batch", None)
    began = time.perf_counter()
    clock, first_at, first_n, outputs = None, None, 0, []
    for indices, batch, failures in loader:
        if prepare is not None:
            indices, batch, failures = prepare(indices, batch)
        assert not failures, failures
        if consume is not None:
            outputs.append(consume(batch))
        if clock is None:
            _sync(device)
            clock, first_at, first_n = Clock(), time.perf_counter(), len(batch)
    _sync(device)
    overall = len(paths) / (time.perf_counter() - began)
    return clock.rates(len(paths) - first_n), first_at - began, outputs, overall


def _stack_payloads(items):
    return torch.stack([payload for _, payload, _ in items])


def run_peer(paths, model, batch_size, workers, device):
    """The seed's extraction loop (torchvision transforms in the workers, fp32, per-batch copy back)."""
    import torchvision.transforms as T

    from extractor.loading import ImageDataset

    transform = T.Compose([T.Resize((256, 256), interpolation=T.InterpolationMode.LANCZOS), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dataset = ImageDataset(paths, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda",
                                         collate_fn=_stack_payloads)
    model = model.to(device).eval()
    with torch.no_grad():  # warm-up (cuDNN's algorithm search) outside the timing, as for ours
        model(torch.zeros(batch_size, 3, 224, 224, device=device))
    _sync(device)
    began, clock, first_at, first_n, feats = time.perf_counter(), None, None, 0, []
    for images in loader:
        with torch.no_grad():
            feats.append(model(images.to(device)).cpu().numpy())
        if clock is None:
            clock, first_at, first_n = Clock(), time.perf_counter(), len(images)
    overall = len(paths) / (time.perf_counter() - began)
    return clock.rates(len(paths) - first_n), first_at - began, np.concatenate(feats), overall


def per_image_costs(files, transform):
    """Milliseconds per image in this process (one thread): the CPU path's steps and the peer's transform."""
    from extractor.transforms import reference_transform
    from helpers.image_io import load_image

    peer = reference_transform(transform.preprocessing)
    images = [load_image(p) for p in files]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs = {}
    for name, fn, items in (("load_image", load_image, files), ("to_uint8 (resize + crop)", transform.to_uint8, images),
                            ("peer Compose (resize, crop, ToTensor, Normalize)", peer, images)):
        began = time.perf_counter()
        for item in items:
            fn(item)
        costs[name] = (time.perf_counter() - began) / len(items) * 1e3
    torch.set_num_threads(threads)
    return costs


def compare_paths(files, transform, embedder, device):
    """Max / mean |gpu - cpu| of the uint8 model inputs (grey levels) and of the features, over ``files``."""
    from extractor.gpu_decode import decoded_pixels

    cpu = decoded_pixels(files, transform, device, "cpu")
    gpu = decoded_pixels(files, transform, device, "gpu", nvjpeg_share=1.0)  # every JPEG by nvjpeg
    d = (gpu.int() - cpu.int()).abs().float()
    f_cpu = torch.cat([embedder(cpu[i:i + 64]) for i in range(0, len(files), 64)]).float()
    f_gpu = torch.cat([embedder(gpu[i:i + 64]) for i in range(0, len(files), 64)]).float()
    f = (f_gpu - f_cpu).abs()
    return {"images": len(files), "pixels_max_abs_diff": float(d.max()), "pixels_mean_abs_diff": float(d.mean()),
            "pixels_fraction_differing": float((d > 0).float().mean()), "features_max_abs_diff": float(f.max()),
            "features_mean_abs_diff": float(f.mean()), "features_scale": float(f_cpu.abs().max())}


def run_extract_features(paths, args, device, precision, workers, batch_size, decode="auto", nvjpeg_share=None):
    """The production path: a temporary folder of links to the cycled images, a temporary store."""
    from extractor.extract import extract_features
    from helpers.feature_store import load_features

    tmp = Path(tempfile.mkdtemp(prefix="bench_extraction_"))
    try:
        folder = tmp / "images"
        folder.mkdir()
        for index, path in enumerate(paths):
            (folder / f"{index:06d}_{Path(path).name}").symlink_to(Path(path).resolve())
        began = time.perf_counter()
        out = extract_features(args.algo, str(folder), weights=args.weights, device=str(device), precision=precision,
                               workers=workers, batch_size=batch_size, out=tmp / "Features", progress=False,
                               chunk_size=max(2048, batch_size), decode=decode, nvjpeg_share=nvjpeg_share)[0]
        total = time.perf_counter() - began
        store = load_features(out, mmap=False)
        return len(paths) / store.meta["extraction_seconds"], len(paths) / total, np.asarray(store.features)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    args = parse_args(build_parser(), argv)
    setup_logging(args.log_level)
    from extractor.embedding import Embedder
    from extractor.loading import auto_workers
    from extractor.models import build_model

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n_images = args.images or (16384 if cuda else 64)
    decodes = {"cpu": ["cpu"], "gpu": ["gpu"], "both": ["cpu", "gpu"], None: ["cpu", "gpu"] if cuda else ["cpu"]}[
        args.decode]
    batch_size = args.batch_size or (256 if cuda else 16)
    precision = args.precision or ("bf16" if cuda else "fp32")
    workers = auto_workers(device) if args.workers is None else args.workers
    files = list_images(args.dataset)
    if not files:
        raise SystemExit(f"error: no images in {args.dataset}")
    paths = [files[i % len(files)] for i in range(n_images)]
    n_batches = -(-n_images // batch_size)
    if cuda:
        torch.backends.cudnn.benchmark = True

    model, transform, info = build_model(args.algo, weights=args.weights, device="cpu")
    embedder = Embedder(model, transform, device, precision).prepare_model()
    setting = (f"{args.algo} ({info['weights']}), {n_images} images of {args.dataset} "
               f"({len(files)} files{', cycled' if n_images > len(files) else ''}), batch {batch_size}, "
               f"{workers} workers, {precision}, channels_last={embedder.channels_last}, device {device} "
               f"[{device_description(device)}], torch threads {torch.get_num_threads()}")
    print(f"setting: {setting}")
    results = {"config": resolved_config(args), "setting": setting, "images": n_images, "batch_size": batch_size,
               "workers": workers, "precision": precision, "device": str(device),
               "device_name": device_description(device), "channels_last": embedder.channels_last,
               "torch_threads": torch.get_num_threads(), "algo": args.algo, "weights": info["weights"]}

    cpu_note = workers == 0 and not cuda  # CPU-time rates cover all the work only without worker processes
    per_cpu = lambda rate: f" ({rate:.2f} images per CPU-second)" if cpu_note else ""  # noqa: E731
    (model_only, model_cpu) = time_model_only(embedder, transform.preprocessing.input_size, batch_size, n_batches,
                                              device)
    print(f"model only (pre-made {tuple(transform.preprocessing.input_size)} tensors on {device}): "
          f"{model_only:9.1f} images/s{per_cpu(model_cpu)}")
    costs = per_image_costs(files[:50], transform)
    print("per-image cost in one process, one thread (50 files): "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in costs.items()))
    results["per_image_ms_one_thread"] = costs
    from extractor.gpu_decode import DEFAULT_NVJPEG_SHARE, GpuJpegItem

    results["paths"] = {}
    ours = None
    main_path = "gpu" if "gpu" in decodes else "cpu"
    shares = args.nvjpeg_share or sorted({0.0, DEFAULT_NVJPEG_SHARE, 1.0})
    best = None  # (full pipeline images/s, key, share) of the fastest path
    runs = [("cpu", None)] if "cpu" in decodes else []
    runs += [("gpu", share) for share in shares] if "gpu" in decodes else []
    for decode_path, share in runs:
        key = decode_path if share is None else f"gpu nvjpeg_share={share:g}"
        item_fn = GpuJpegItem(transform, device, share) if decode_path == "gpu" else transform.to_uint8
        label = (f"[decode {key}, {n_images} images, batch {batch_size}, {workers} workers, {precision}, "
                 f"{device}]")
        (decode, decode_cpu), decode_start, _, decode_overall = time_loader(paths, item_fn, batch_size, workers,
                                                                            device)
        print(f"decode + preprocess only {label}: {decode:9.1f} images/s{per_cpu(decode_cpu)} steady, "
              f"{decode_overall:9.1f} images/s overall (first batch after {decode_start:.2f} s)")
        (full, full_cpu), full_start, outputs, full_overall = time_loader(paths, item_fn, batch_size, workers,
                                                                          device, consume=embedder)
        feats = torch.cat(outputs).cpu().numpy()
        if best is None or full > best[0] or (main_path == "gpu" and best[1] == "cpu"):
            best, ours, full_cpu_main = (full, key, share), feats, full_cpu
        ratio = full / model_only
        print(f"full pipeline, ours (decode + preprocess + model) {label}: {full:9.1f} images/s{per_cpu(full_cpu)} "
              f"steady, {full_overall:9.1f} images/s overall (first batch after {full_start:.2f} s)")
        print(f"ratio full pipeline / model only {label}: {ratio:.3f} steady, {full_overall / model_only:.3f} "
              f"overall, in wall time"
              + (f", {full_cpu / model_cpu:.3f} in CPU time" if cpu_note else "")
              + ("  (target >= 0.8 on GPU)" if cuda else ""))
        results["paths"][key] = {"decode_only_images_per_s": decode, "full_pipeline_images_per_s": full,
                                 "full_over_model_only": ratio, "first_batch_s": full_start,
                                 "decode_only_overall_images_per_s": decode_overall,
                                 "full_pipeline_overall_images_per_s": full_overall,
                                 "full_over_model_only_overall": full_overall / model_only, "nvjpeg_share": share}
        if cpu_note:
            results["paths"][key].update(decode_only_images_per_cpu_s=decode_cpu,
                                                 full_pipeline_images_per_cpu_s=full_cpu)
    results["model_only_images_per_s"] = model_only
    main_key, main_share = best[1], best[2]
    print(f"main result: decode {main_key} (the fastest path run)")
    results.update(main_path=main_key, **{k: results["paths"][main_key][k] for k in (
        "decode_only_images_per_s", "full_pipeline_images_per_s", "full_over_model_only",
        "full_pipeline_overall_images_per_s", "full_over_model_only_overall")})
    full = results["paths"][main_key]["full_pipeline_images_per_s"]
    if "gpu" in decodes:
        diff = compare_paths(files, transform, embedder, device)
        print(f"nvjpeg (share 1) vs cpu decode path over {diff['images']} files: model inputs max |diff| "
              f"{diff['pixels_max_abs_diff']:.0f} grey levels, mean {diff['pixels_mean_abs_diff']:.4f}, "
              f"{100 * diff['pixels_fraction_differing']:.2f}% of values differ; features ({precision}) max |diff| "
              f"{diff['features_max_abs_diff']:.2e}, mean {diff['features_mean_abs_diff']:.2e} (features up to "
              f"{diff['features_scale']:.2e})")
        results["gpu_vs_cpu_decode"] = diff
    store_rate, store_total_rate, stored = run_extract_features(paths, args, device, precision, workers, batch_size,
                                                                decode=main_path if cuda else "cpu",
                                                                nvjpeg_share=main_share)
    print(f"extract_features end to end (decode {main_path if cuda else 'cpu'}, writes the store): {store_rate:9.1f} images/s in its "
          f"extraction loop, {store_total_rate:9.1f} images/s including model build and listing")
    results.update(extract_features_images_per_s=store_rate, extract_features_total_images_per_s=store_total_rate)
    full_cpu = full_cpu_main
    if cpu_note:
        results.update(model_only_images_per_cpu_s=model_cpu)
    same = float(np.abs(stored - ours).max())
    print(f"max |extract_features - pipeline| over {len(ours)} x {ours.shape[1]} features: {same:.2e}")
    results["max_abs_diff_store_vs_pipeline"] = same
    if not args.skip_peer:
        peer_model, _, _ = build_model(args.algo, weights=args.weights, device="cpu")
        (peer, peer_cpu), peer_start, peer_feats, peer_overall = run_peer(paths, peer_model, batch_size, workers, device)
        diff = float(np.abs(peer_feats - ours).max())
        scale = float(np.abs(peer_feats).max())
        print(f"peer, the seed's loop (torchvision Compose, fp32, per-batch .cpu()) [{n_images} images, batch "
              f"{batch_size}, {workers} workers, fp32, {device}]: {peer:9.1f} images/s{per_cpu(peer_cpu)} steady, "
              f"{peer_overall:9.1f} images/s overall (first batch after {peer_start:.2f} s)")
        print(f"ratio ours / peer: {full / peer:.2f}x in wall time"
              + (f", {full_cpu / peer_cpu:.2f}x in CPU time" if cpu_note else "")
              + f"; max |ours - peer| = {diff:.2e} (features up to {scale:.2e}, ours in {precision})")
        results.update(peer_images_per_s=peer, peer_overall_images_per_s=peer_overall, ours_over_peer=full / peer, max_abs_diff_vs_peer=diff,
                       peer_feature_scale=scale)
        if cpu_note:
            results.update(peer_images_per_cpu_s=peer_cpu, ours_over_peer_cpu_time=full_cpu / peer_cpu)
        if precision == "fp32" and diff > 1e-3 * max(scale, 1.0):
            print("error: ours and the peer disagree in fp32", file=sys.stderr)
            return 1
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / f"bench_extraction_{device.type}.json"
    write_json(out, results)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
