"""The crop-resistant multi-hash of imagehash (``crop_resistant_hash`` / ``ImageMultiHash``), fast and fixed-width.

imagehash segments the image into bright and dark regions with a pure-Python flood fill and hashes the bounding box
of each region with ``dhash``. Here the regions are the same 4-connected components, found with
``scipy.ndimage.label``, visited in the same order (by their first pixel in row-major order, bright regions first)
and with the same stopping rule as imagehash's loop, which stops looking for dark regions once the number of
visited pixels (counting the 2 * (w + h) pixels of the border it marks as visited, and not counting the start pixel
of a one-pixel region, which its flood fill never marks) reaches the number of pixels of the image.

Row layout (``uint8 [1 + max_segments * segment_bytes]``): byte 0 is the number of segments ``n`` (1..max_segments);
slot ``i < n`` holds ``np.packbits`` of segment ``i``'s dhash; unused slots are zero. The segments are those of
``imagehash.crop_resistant_hash(image, limit_segments=max_segments)``, in its order (largest first, ties in
discovery order).
"""
import numpy as np
from PIL import Image, ImageFilter

# scipy.ndimage is imported by the two functions that label segments: every hash imports this module, and a
# process that only computes Phash/Dhash (query.py on a hash index) must not pay scipy's import (~1 s).

SEGMENTATION_SIZE = 300
SEGMENT_THRESHOLD = 128
MIN_SEGMENT_SIZE = 500
DEFAULT_BIT_ERROR_RATE = 0.25


def _components(mask):
    """4-connected components of ``mask`` as ``(first_index, size, label, labels)`` sorted by first pixel."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return [], labels
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    sizes = np.bincount(flat, minlength=count + 1)
    order = [(int(f), int(sizes[i]), int(i)) for i, f in zip(ids, first) if i != 0]
    order.sort()
    return order, labels


def find_segments(pixels, segment_threshold=SEGMENT_THRESHOLD, min_segment_size=MIN_SEGMENT_SIZE):
    """imagehash's ``_find_all_segments``: bounding boxes and sizes of the bright then dark regions.

    Returns
    -------
    list of (size, (min_row, min_col, max_row, max_col))
        In imagehash's order: bright regions by first pixel, then dark regions by first pixel.
    """
    from scipy import ndimage

    rows, cols = pixels.shape
    bright = pixels > segment_threshold
    visited = 2 * (rows + cols)  # imagehash marks the pixels just outside the border as segmented
    segments = []
    for mask, is_dark in ((bright, False), (~bright, True)):
        order, labels = _components(mask)
        boxes = ndimage.find_objects(labels) if order else []
        for _, size, label in order:
            if is_dark and visited >= rows * cols:
                break  # imagehash's `while len(already_segmented) < img_width * img_height`
            if size > 1:  # the start pixel of a one-pixel region is never added to imagehash's visited set
                visited += size
            if size > min_segment_size:
                box = boxes[label - 1]
                segments.append((size, (box[0].start, box[1].start, box[0].stop - 1, box[1].stop - 1)))
    return segments


def segment_boxes(gray_300, image_size, max_segments):
    """Crop boxes (in the original image, as imagehash computes them) of the crop-resistant segments.

    ``gray_300`` is the ``'L'`` image resized to 300x300 with LANCZOS (uint8 array); ``image_size`` is ``(w, h)``.
    """
    image = Image.fromarray(np.asarray(gray_300, dtype=np.uint8), "L")
    image = image.filter(ImageFilter.GaussianBlur()).filter(ImageFilter.MedianFilter())
    pixels = np.asarray(image).astype(np.float32)
    segments = find_segments(pixels)
    if not segments:
        last = SEGMENTATION_SIZE - 1
        segments = [(2, (0, 0, last, last))]
    if max_segments:
        segments = sorted(segments, key=lambda s: s[0], reverse=True)[:max_segments]
    orig_w, orig_h = image_size
    scale_w = float(orig_w) / SEGMENTATION_SIZE
    scale_h = float(orig_h) / SEGMENTATION_SIZE
    boxes = []
    for _, (min_row, min_col, max_row, max_col) in segments:
        boxes.append((min_col * scale_w, min_row * scale_h, (max_col + 1) * scale_w, (max_row + 1) * scale_h))
    return boxes


def pack_segments(segment_bits, max_segments, segment_bytes):
    """Fixed-width row from the list of segment bit arrays (see the module docstring)."""
    row = np.zeros(1 + max_segments * segment_bytes, dtype=np.uint8)
    row[0] = len(segment_bits)
    for i, bits in enumerate(segment_bits):
        row[1 + i * segment_bytes:1 + (i + 1) * segment_bytes] = np.packbits(np.asarray(bits, dtype=bool).ravel())
    return row


def _split(rows, segment_bytes):
    """``(counts [N], slots uint8 [N, M, segment_bytes])`` of packed crop-resistant rows, validated."""
    rows = np.asarray(rows)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.dtype != np.uint8 or rows.ndim != 2 or (rows.shape[1] - 1) % segment_bytes:
        raise ValueError(f"crop-resistant rows must be uint8 [N, 1 + k * {segment_bytes}], got {rows.dtype} "
                         f"{rows.shape}")
    max_segments = (rows.shape[1] - 1) // segment_bytes
    counts = rows[:, 0].astype(np.int64)
    bad = np.flatnonzero((counts < 1) | (counts > max_segments))
    if bad.size:
        raise ValueError(f"row {int(bad[0])} is not a crop-resistant hash (segment count {int(counts[bad[0]])}, "
                         f"expected 1..{max_segments})")
    return counts, rows[:, 1:].reshape(rows.shape[0], max_segments, segment_bytes)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _pair_distances(a_slots, b_slots):
    """Hamming distances ``[Q, N, M, M]`` between every segment of every query and database row."""
    if a_slots.shape[-1] % 8 == 0 and hasattr(np, "bitwise_count"):
        a = np.ascontiguousarray(a_slots).view(np.uint64)
        b = np.ascontiguousarray(b_slots).view(np.uint64)
        x = a[:, None, :, None, :] ^ b[None, :, None, :, :]
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int32)
    x = a_slots[:, None, :, None, :] ^ b_slots[None, :, None, :, :]
    return _POPCOUNT8[x].sum(axis=-1, dtype=np.int32)


def crop_resistant_distances(query_rows, db_rows, segment_bits=64, hamming_cutoff=None, bit_error_rate=None,
                             return_matches=False, chunk_elements=1 << 22):
    """imagehash's ``ImageMultiHash`` distance ``query - db`` for every pair of rows, vectorised.

    For each segment of the query, the closest segment of the database image counts as a match when their Hamming
    distance is at most ``hamming_cutoff`` (default ``segment_bits * bit_error_rate``, ``bit_error_rate`` 0.25).
    The distance is ``n_query - (matches - sum_of_matched_distances / (matches * segment_bits))``, or
    ``n_query`` when nothing matches (lower is more similar; not symmetric), exactly as imagehash computes it.

    Parameters
    ----------
    query_rows, db_rows : uint8 arrays ``[Q, nbytes]`` and ``[N, nbytes]`` (or single rows)
        Packed crop-resistant hashes (see the module docstring).
    segment_bits : int
        Bits of one segment hash (64 for the default dhash of hash_size 8).
    return_matches : bool
        Also return the number of matching segments ``int [Q, N]`` (imagehash's ``hash_diff`` first element;
        ``matches >= 1`` is its ``matches()``).

    Returns
    -------
    float64 ndarray ``[Q, N]`` (and int ndarray ``[Q, N]`` with ``return_matches``).
    """
    segment_bytes = -(-int(segment_bits) // 8)
    q_counts, q_slots = _split(query_rows, segment_bytes)
    d_counts, d_slots = _split(db_rows, segment_bytes)
    if q_slots.shape[1:] != d_slots.shape[1:]:
        raise ValueError(f"query and database rows differ in width: {q_slots.shape} vs {d_slots.shape}")
    if hamming_cutoff is None:
        hamming_cutoff = segment_bits * (DEFAULT_BIT_ERROR_RATE if bit_error_rate is None else bit_error_rate)
    max_segments = q_slots.shape[1]
    slot = np.arange(max_segments)
    q_valid = slot[None, :] < q_counts[:, None]
    d_invalid = slot[None, :] >= d_counts[:, None]
    n_q, n_d = q_slots.shape[0], d_slots.shape[0]
    distances = np.empty((n_q, n_d))
    matches_out = np.empty((n_q, n_d), dtype=np.int64)
    step = max(1, int(chunk_elements // max(1, n_q * max_segments * max_segments)))
    big = np.iinfo(np.int32).max
    for d0 in range(0, n_d, step):
        d1 = min(n_d, d0 + step)
        pair = _pair_distances(q_slots, d_slots[d0:d1])
        pair[np.broadcast_to(d_invalid[None, d0:d1, None, :], pair.shape)] = big
        lowest = pair.min(axis=3)  # [Q, n, M]: closest database segment for each query segment
        matched = q_valid[:, None, :] & (lowest <= hamming_cutoff)
        matches = matched.sum(axis=2)
        total = np.where(matched, lowest, 0).sum(axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            tie_breaker = 0.0 - total.astype(np.float64) / (matches * segment_bits).astype(np.float64)
        score = matches + tie_breaker
        count = q_counts[:, None].astype(np.float64)
        distances[:, d0:d1] = np.where(matches == 0, count, count - score)
        matches_out[:, d0:d1] = matches
    if return_matches:
        return distances, matches_out
    return distances
