"""A stand-in for the Kaggle memes dataset, with exact ground truth: memes generated from template images.

:func:`build_memes` reads a folder of template images and writes::

    OUT_DIR/Templates/<template>.jpg      the template itself (JPEG, quality 95)
    OUT_DIR/Memes/<template>_<n>.jpg      n = 0 .. per_template-1

as in the prepared Kaggle dataset; the ground truth is also written as data (:func:`write_meme_truth`).
A meme is made like real ones: a random crop of up to 15 % of each dimension, then captions (top/bottom white
uppercase text with a black outline, or a white caption bar above or below the picture, sometimes a small
watermark), a rescale, and one or two JPEG compressions. Captions cover a minority of the picture, so memes of
one template visibly share it. Everything is seeded by (seed, template, n): reruns and worker counts give the
same files, and existing files are kept (resumable).
"""
import logging
import time
from pathlib import Path

import numpy as np
from PIL import ImageDraw

from helpers.image_io import DEFAULT_MAX_PIXELS, SkipReport, list_images
from helpers.seeding import stable_seed

from . import edits
from .runner import encode, finish_report, load_for_task, new_result, run_parallel, write_atomic
from .text import draw_text, fit_caption, random_caption

logger = logging.getLogger(__name__)

WATERMARKS = ("imgflip.com", "memegenerator.net", "made with mematic", "9gag.com", "reddit")


def _top_bottom_captions(image, rng):
    """Classic image macro: uppercase white captions with a black outline at the top and/or the bottom."""
    width, height = image.size
    out = image.copy()
    draw = ImageDraw.Draw(out)
    where = rng.choice(["both", "both", "top", "bottom"])
    margin = max(1, int(0.03 * width))
    for position in ("top", "bottom"):
        if where not in (position, "both"):
            continue
        text = random_caption(rng, 2, 9).upper()
        box_h = max(1, int(height * rng.uniform(0.12, 0.24)))
        wrapped, font, stroke, (text_w, text_h) = fit_caption(
            text, width - 2 * margin, box_h, start_size=max(1, int(0.11 * height)), stroke_ratio=0.07)
        x = (width - text_w) // 2
        y = margin if position == "top" else height - margin - text_h
        draw_text(draw, (x, y), wrapped, font, fill=(255, 255, 255), stroke_fill=(0, 0, 0), stroke_width=stroke)
    return out, f"captions({where})"


def _watermark(image, rng):
    width, height = image.size
    out = image.copy()
    text = WATERMARKS[int(rng.integers(0, len(WATERMARKS)))]
    wrapped, font, _, (text_w, text_h) = fit_caption(text, max(1, width // 3), max(1, height // 12),
                                                     start_size=max(1, height // 30), stroke_ratio=0)
    x = width - text_w - 2 if rng.random() < 0.7 else 2
    draw_text(ImageDraw.Draw(out), (max(0, x), max(0, height - text_h - 2)), wrapped, font,
              fill=(235, 235, 235) if rng.random() < 0.5 else (40, 40, 40))
    return out


def make_meme(template, rng):
    """One meme from an RGB ``template`` image.

    Returns
    -------
    (PIL.Image.Image, float, str)
        The meme (RGB), the JPEG quality to save it with, and a description of what was done.
    """
    width, height = template.size
    steps = []
    image = template
    if rng.random() < 0.7:
        keep_w, keep_h = rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)
        crop_w, crop_h = max(1, round(width * keep_w)), max(1, round(height * keep_h))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        image = image.crop((left, top, left + crop_w, top + crop_h))
        steps.append(f"crop({keep_w:.2f}x{keep_h:.2f})")
    style = rng.random()
    if style < 0.6:
        image, desc = _top_bottom_captions(image, rng)
    elif style < 0.9:
        position = "top" if rng.random() < 0.75 else "bottom"
        fraction = rng.uniform(0.12, 0.35)
        image = edits.caption_bar(image, rng, fraction, position, text=random_caption(rng, 4, 16))
        desc = f"caption_bar({position}, {fraction:.2f})"
    else:
        image, desc = _top_bottom_captions(image, rng)
        image = edits.caption_bar(image, rng, rng.uniform(0.1, 0.25), "top", text=random_caption(rng, 3, 10))
        desc += "+caption_bar(top)"
    steps.append(desc)
    if rng.random() < 0.25:
        image = _watermark(image, rng)
        steps.append("watermark")
    factor = float(np.exp(rng.uniform(np.log(0.5), np.log(1.5))))
    factor = min(factor, max(1.0, 1600 / max(image.size)))
    image = edits.resize(image, image.width * factor, image.height * factor)
    steps.append(f"rescale({factor:.2f})")
    if rng.random() < 0.4:  # reposted memes are compressed more than once
        first = int(rng.integers(50, 96))
        image = edits.jpeg(image, first)
        steps.append(f"jpeg({first})")
    quality = int(rng.integers(40, 96))
    steps.append(f"jpeg({quality})")
    return image, quality, " > ".join(steps)


def template_name(stem):
    """The template name of a file stem: ``_`` becomes ``-`` (``_`` separates template and meme number)."""
    return stem.replace("_", "-")


def _build_one(task):
    path, name, per_template, out_dir, seed, max_pixels = task
    memes_dir, templates_dir = Path(out_dir) / "Memes", Path(out_dir) / "Templates"
    template_path = templates_dir / f"{name}.jpg"
    wanted = [n for n in range(per_template) if not (memes_dir / f"{name}_{n}.jpg").exists()]
    result = new_result(written=0, existing=per_template - len(wanted), template_written=False)
    template = load_for_task(path, result, max_pixels) if wanted or not template_path.exists() else None
    if template is None:
        return result
    if not template_path.exists():
        write_atomic(template_path, encode(template, "jpg", jpeg_quality=95))
        result["template_written"] = True
    for n in wanted:
        rng = np.random.default_rng(stable_seed("meme", seed, name, n))
        meme, quality, _ = make_meme(template, rng)
        write_atomic(memes_dir / f"{name}_{n}.jpg", encode(meme, "jpg", jpeg_quality=quality))
        result["written"] += 1
    return result


def build_memes(templates_dir, out_dir, per_template=20, seed=0, workers=1, progress=True,
                max_pixels=DEFAULT_MAX_PIXELS):
    """Generate ``per_template`` memes for every template image of ``templates_dir``.

    Parameters
    ----------
    templates_dir : str or Path
        Folder of template images (read recursively); the template name is the file stem with ``_`` -> ``-``.
    out_dir : str or Path
        Receives ``Memes/<template>_<n>.jpg`` and ``Templates/<template>.jpg``.
    per_template : int
        Memes per template.
    seed : int
        Global seed; meme ``n`` of template ``t`` is seeded by (seed, t, n).
    workers : int
        Processes (1 = in this process).
    progress : bool
        Show a progress bar.
    max_pixels : int or None
        Templates of more pixels are skipped and listed (decompression-bomb guard); ``None``: no limit.

    Returns
    -------
    dict
        ``templates_total``, ``templates_read``, ``templates_written``, ``memes_written``, ``memes_existing``,
        ``skipped`` (list of ``[path, reason]``, also written to ``out_dir/skipped.txt``), ``seconds``.
    """
    templates_dir, out_dir = Path(templates_dir), Path(out_dir)
    if int(per_template) < 1:
        raise ValueError(f"per_template must be at least 1, got {per_template}")
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not templates_dir.is_dir():
        raise FileNotFoundError(f"templates folder not found: {templates_dir}")
    report = SkipReport()
    # Never read our own outputs back as templates (templates_dir may contain out_dir), but do read templates
    # that merely live beside them (e.g. Datasets/demo/Original with out_dir Datasets/demo).
    outputs = {(out_dir / "Memes").resolve(), (out_dir / "Templates").resolve()}
    paths = [p for p in list_images(templates_dir, report=report) if not outputs & set(p.resolve().parents)]
    tasks, seen = [], {}
    for path in paths:
        name = template_name(path.stem)
        if name in seen:
            report.add(path, f"same template name '{name}' as {seen[name]}")
            continue
        seen[name] = path
        tasks.append((str(path), name, int(per_template), str(out_dir), int(seed), max_pixels))
    if not tasks:
        listed = ""
        if report:
            finish_report(report, out_dir, logger)
            listed = f"; {len(report)} file(s) skipped, listed in {out_dir / 'skipped.txt'}"
        raise ValueError(f"no template image in {templates_dir}{listed}")
    (out_dir / "Memes").mkdir(parents=True, exist_ok=True)
    (out_dir / "Templates").mkdir(parents=True, exist_ok=True)
    summary = {"templates_total": len(tasks), "templates_read": 0, "templates_written": 0, "memes_written": 0,
               "memes_existing": 0}
    start = time.perf_counter()
    for result in run_parallel(_build_one, tasks, workers, desc="memes", unit="template", progress=progress):
        summary["templates_read"] += int(result["loaded"])
        summary["templates_written"] += int(result["template_written"])
        summary["memes_written"] += result["written"]
        summary["memes_existing"] += result["existing"]
        for path, reason in result["failures"]:
            report.add(path, reason)
    summary["seconds"] = time.perf_counter() - start
    summary["ground_truth"] = [str(path) for path in write_meme_truth(out_dir, [task[1] for task in tasks],
                                                                      int(per_template))]
    summary["skipped"] = finish_report(report, out_dir, logger)
    if summary["templates_read"] == 0 and summary["memes_existing"] == 0:
        raise ValueError(f"none of the {len(tasks)} template(s) of {templates_dir} could be read; the reasons are "
                         f"in {out_dir / 'skipped.txt'}")
    return summary


def write_meme_truth(out_dir, names, per_template):
    """The ground truth of the built memes, as data: ``Memes/ground_truth.csv`` (each meme is a copy of its
    template in ``Templates/``), ``Memes/labels.csv`` and ``Templates/labels.csv`` (the template of each image)."""
    from helpers.ground_truth import GROUND_TRUTH_FILE, LABELS_FILE, write_ground_truth, write_labels

    out_dir = Path(out_dir)
    memes, templates = {}, {}
    for name in names:
        if (out_dir / "Templates" / f"{name}.jpg").exists():
            templates[f"{name}.jpg"] = name
        for n in range(per_template):
            if (out_dir / "Memes" / f"{name}_{n}.jpg").exists():
                memes[f"{name}_{n}.jpg"] = name
    rows = [(meme, f"{name}.jpg" if f"{name}.jpg" in templates else None, "meme") for meme, name in memes.items()]
    return [write_ground_truth(out_dir / "Memes" / GROUND_TRUTH_FILE, rows),
            write_labels(out_dir / "Memes" / LABELS_FILE, memes),
            write_labels(out_dir / "Templates" / LABELS_FILE, templates)]
