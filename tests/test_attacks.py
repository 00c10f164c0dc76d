"""The attacks themselves: IDs, every attack on odd images, and each one against an independent reference."""

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from data_retrieval import attacks
from helpers.datasets import attack_of, identity_of
from helpers.image_io import load_image

# The seed's 58 IDs, written out by hand from the seed's parameter lists (independent of retrieve_ids).
SEED_IDS = (
    [f"gaussian_noise_{v}" for v in ("0.01", "0.02", "0.05")]
    + [f"speckle_noise_{v}" for v in ("0.01", "0.02", "0.05")]
    + [f"s&p_noise_{v}" for v in ("0.05", "0.1", "0.15")]
    + [f"gaussian_filter_{k}x{k}" for k in (3, 5, 7)]
    + [f"median_filter_{k}x{k}" for k in (3, 5, 7)]
    + [f"jpg_compression_{q}" for q in (10, 50, 90)]
    + [f"scaling_{r}" for r in ("0.4", "0.8", "1.2", "1.6")]
    + [f"cropping_{p}_and_rescaling" for p in (5, 10, 20, 40, 60)]
    + [f"rotation_{a}_and_rescaling" for a in (5, 10, 20, 40, 60)]
    + [f"shearing_{a}" for a in (1, 2, 5, 10, 20)]
    + [f"{kind}_enhancement_{f}" for kind in ("contrast", "color", "brightness", "sharpness")
       for f in ("0.5", "0.66", "1.5", "2")]
    + [f"text_length_{n}" for n in (10, 20, 30, 40, 50)]
)
ALL_IDS = attacks.retrieve_ids() + attacks.extra_attack_ids()


def test_default_ids_are_the_seeds_58_in_a_fixed_order():
    assert attacks.retrieve_ids() == SEED_IDS
    assert len(SEED_IDS) == 58 and len(set(SEED_IDS)) == 58


def test_retrieve_ids_parameters_and_switches():
    ids = attacks.retrieve_ids(resize_cropping=False, resize_rotation=False)
    assert "cropping_5" in ids and "rotation_60" in ids and not any("rescaling" in i for i in ids)
    assert attacks.retrieve_ids(text_lengths=()) == SEED_IDS[:-5]
    assert attacks.retrieve_ids(gaussian_kernels=(9,))[9] == "gaussian_filter_9x9"
    with pytest.raises(TypeError, match="unexpected attack parameter"):
        attacks.retrieve_ids(blur_sigmas=(1,))
    with pytest.raises(TypeError, match="sequence"):
        attacks.retrieve_ids(text_lengths=10)


def test_extra_ids_follow_the_naming_convention():
    extra = attacks.extra_attack_ids()
    assert len(extra) == len(set(extra)) == 23
    assert not set(extra) & set(SEED_IDS)
    for attack_id in ALL_IDS:
        name = f"100007_{attack_id}.png"
        assert identity_of(name) == "100007" and attack_of(name) == attack_id
    assert attacks.extra_attack_ids(["flip", "grayscale"]) == ["horizontal_flip", "grayscale"]
    with pytest.raises(ValueError, match="unknown extra attack family"):
        attacks.extra_attack_ids(["nope"])


def test_attack_ids_selects_families():
    assert attacks.attack_ids(families=["text"]) == SEED_IDS[-5:]
    assert attacks.attack_ids(extra=True) == SEED_IDS + attacks.extra_attack_ids()
    assert attacks.attack_ids(families=["flip", "noise"]) == SEED_IDS[:9] + ["horizontal_flip"]
    with pytest.raises(ValueError, match="unknown attack family"):
        attacks.attack_ids(families=["blurr"])


def _odd_images(tmp_path, photo):
    """Images of odd sizes and modes; the 16-bit one goes through the toolkit's loader."""
    rgb = photo(40, 30, seed=1)
    images = {
        "1x1": Image.new("RGB", (1, 1), (200, 10, 10)),
        "3x2": photo(3, 2, seed=2),
        "400x4": photo(400, 4, seed=3),
        "4x400": photo(4, 400, seed=4),
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE),
    }
    sixteen = np.linspace(0, 65535, 24 * 18).reshape(18, 24).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    images["I;16 via loader"] = load_image(tmp_path / "deep.png")
    return images


def test_every_attack_on_odd_images_gives_valid_rgb(tmp_path, photo):
    images = _odd_images(tmp_path, photo)
    for kind, image in images.items():
        for attack_id in ALL_IDS:
            out = attacks.apply_attack(image, attack_id, seed=3)
            assert isinstance(out, Image.Image) and out.mode == "RGB", (kind, attack_id)
            assert out.width >= 1 and out.height >= 1, (kind, attack_id)
            np.asarray(out)  # the pixels are really there


def test_non_rgb_input_is_converted_like_the_loader(tmp_path, photo):
    rgba = photo(32, 24, seed=5).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "alpha.png")
    via_loader = load_image(tmp_path / "alpha.png")
    for attack_id in ("gaussian_noise_0.01", "text_length_10", "emoji_overlay_0.2"):
        direct = attacks.apply_attack(rgba, attack_id, seed=1)
        assert np.array_equal(np.asarray(direct), np.asarray(attacks.apply_attack(via_loader, attack_id, seed=1)))


def test_clear_errors():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="empty image"):
        attacks.apply_attack(Image.new("RGB", (0, 0)), "grayscale", 0)
    with pytest.raises(TypeError, match="PIL"):
        attacks.apply_attack(np.zeros((4, 4, 3), np.uint8), "grayscale", 0)
    with pytest.raises(ValueError, match="unknown attack ID"):
        attacks.apply_attack(image, "gaussian_noise", 0)
    with pytest.raises(ValueError, match="quality"):
        attacks.apply_attack(image, "jpg_compression_0", 0)
    with pytest.raises(ValueError, match="odd"):
        attacks.apply_attack(image, "gaussian_filter_4x4", 0)
    with pytest.raises(ValueError, match="percentage"):
        attacks.apply_attack(image, "cropping_100_and_rescaling", 0)


def test_random_attacks_are_seeded(photo):
    image = photo(64, 48, seed=0)
    for attack_id in ("gaussian_noise_0.02", "s&p_noise_0.1", "text_length_20", "chain_1", "perspective_0.2"):
        first = np.asarray(attacks.apply_attack(image, attack_id, seed=11))
        assert np.array_equal(first, np.asarray(attacks.apply_attack(image, attack_id, seed=11))), attack_id
        other = np.asarray(attacks.apply_attack(image, attack_id, seed=12))
        assert first.shape != other.shape or not np.array_equal(first, other), attack_id


# --- references ------------------------------------------------------------------------------------------------

def test_noise_statistics_match_their_parameters():
    gray = Image.new("RGB", (200, 200), (128, 128, 128))
    base = 128 / 255
    for variance in (0.01, 0.02):
        out = np.asarray(attacks.apply_attack(gray, f"gaussian_noise_{variance}", 0)) / 255.0
        assert abs(np.var(out - base) - variance) < 0.1 * variance
        speckle = np.asarray(attacks.apply_attack(gray, f"speckle_noise_{variance}", 0)) / 255.0
        assert abs(np.var((speckle - base) / base) - variance) < 0.1 * variance
    for amount in (0.05, 0.15):
        out = np.asarray(attacks.apply_attack(gray, f"s&p_noise_{amount}", 0))
        extreme = np.isin(out, (0, 255)).mean()
        assert abs(extreme - amount) < 0.01
        assert abs((out == 255).mean() - amount / 2) < 0.01


def _reference_gaussian(array, size):
    sigma = 0.6 * ((size - 1) * 0.5 - 1) + 1
    radius = size // 2
    x = np.arange(-radius, radius + 1)
    k1 = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = np.outer(k1, k1) / np.outer(k1, k1).sum()
    padded = np.pad(array.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    out = np.zeros(array.shape, np.float64)
    for dy in range(size):
        for dx in range(size):
            out += kernel[dy, dx] * padded[dy:dy + array.shape[0], dx:dx + array.shape[1]]
    return np.clip(np.rint(out), 0, 255)


def test_gaussian_filter_matches_a_direct_convolution(photo):
    image = photo(50, 37, seed=3)
    array = np.asarray(image)
    for size in (3, 5, 7):
        ours = np.asarray(attacks.apply_attack(image, f"gaussian_filter_{size}x{size}", 0)).astype(int)
        diff = np.abs(ours - _reference_gaussian(array, size))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_median_filter_matches_scipy_and_pil(photo):
    image = photo(45, 33, seed=4)
    array = np.asarray(image)
    for size in (3, 5, 7):
        ours = np.asarray(attacks.apply_attack(image, f"median_filter_{size}x{size}", 0))
        assert np.array_equal(ours, ndimage.median_filter(array, size=(size, size, 1), mode="nearest"))
        assert np.array_equal(ours, np.asarray(image.filter(ImageFilter.MedianFilter(size))))


def test_jpeg_and_scaling_match_pil(photo, tmp_path):
    image = photo(60, 40, seed=5)
    image.save(tmp_path / "q50.jpg", quality=50)
    with Image.open(tmp_path / "q50.jpg") as reference:
        assert np.array_equal(np.asarray(attacks.apply_attack(image, "jpg_compression_50", 0)),
                              np.asarray(reference.convert("RGB")))
    scaled = attacks.apply_attack(image, "scaling_0.4", 0)
    assert scaled.size == (24, 16)
    assert np.array_equal(np.asarray(scaled), np.asarray(image.resize((24, 16), Image.Resampling.BICUBIC)))


def test_cropping_is_central(photo):
    image = photo(100, 50, seed=6)
    cropped = attacks.apply_attack(image, "cropping_20", 0)
    assert cropped.size == (80, 40)
    assert np.array_equal(np.asarray(cropped), np.asarray(image)[5:45, 10:90])
    assert attacks.apply_attack(image, "cropping_20_and_rescaling", 0).size == (100, 50)


def test_rotation_is_counter_clockwise_on_an_expanded_canvas(photo):
    image = photo(30, 20, seed=7)
    rotated = attacks.apply_attack(image, "rotation_90", 0)
    assert np.array_equal(np.asarray(rotated), np.rot90(np.asarray(image)))  # numpy: counter-clockwise
    assert attacks.apply_attack(image, "rotation_40_and_rescaling", 0).size == (30, 20)
    assert attacks.apply_attack(image, "rotation_40", 0).size[0] > 30


def test_shearing_matches_torchvision():
    pytest.importorskip("torchvision")  # a runtime requirement; only absent in a broken install
    import torchvision.transforms.functional as F

    from tests.conftest import synthetic_photo

    image = synthetic_photo(81, 57, seed=8)
    for angle in (1, 5, 20):
        ours = np.asarray(attacks.apply_attack(image, f"shearing_{angle}", 0)).astype(int)
        reference = np.asarray(F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[-angle, -angle],
                                        interpolation=F.InterpolationMode.BICUBIC)).astype(int)
        diff = np.abs(ours - reference)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001


def test_enhancements_match_their_definitions(photo):
    image = photo(40, 30, seed=9)
    array = np.asarray(image).astype(float)
    darker = np.asarray(attacks.apply_attack(image, "brightness_enhancement_0.5", 0)).astype(float)
    assert np.abs(darker - array * 0.5).max() <= 1
    gray = np.asarray(attacks.apply_attack(image, "color_enhancement_0", 0)).astype(int)
    luma = np.asarray(image.convert("L")).astype(int)
    assert np.abs(gray - luma[..., None]).max() <= 1
    flat = np.asarray(attacks.apply_attack(image, "contrast_enhancement_0", 0))
    assert flat.std(axis=(0, 1)).max() == 0


def test_text_attack_draws_white_text_with_a_black_stroke_inside_the_image():
    image = Image.new("RGB", (512, 300), (0, 0, 255))
    assert attacks.seed_text_font_size(512, 512) == 40
    for length in (10, 50):
        out = np.asarray(attacks.apply_attack(image, f"text_length_{length}", 4))
        changed = np.any(out != np.asarray(image), axis=2)
        rows, cols = np.nonzero(changed)
        assert rows.min() >= 1 and cols.min() >= 1 and rows.max() <= 298 and cols.max() <= 510
        # Only white, black and their blends with the blue background: red and green stay equal.
        assert np.abs(out[changed][:, 0].astype(int) - out[changed][:, 1]).max() <= 1
        assert (out == 255).all(axis=2).sum() > 50 and (out == 0).all(axis=2).sum() > 50
        lines = length // 20 + (length % 20 > 0)
        assert rows.max() - rows.min() > 30 * lines  # a 40 px font, one line per 20 characters
    unchanged = attacks.apply_attack(image, "text_length_0", 4)
    assert np.array_equal(np.asarray(unchanged), np.asarray(image))


def test_extra_attacks_do_what_they_say(photo):
    image = photo(100, 60, seed=10)
    array = np.asarray(image)
    assert np.array_equal(np.asarray(attacks.apply_attack(image, "horizontal_flip", 0)), array[:, ::-1])
    gray = np.asarray(attacks.apply_attack(image, "grayscale", 0))
    assert np.array_equal(gray[..., 0], np.asarray(image.convert("L"))) and (gray == gray[..., :1]).all()
    padded = np.asarray(attacks.apply_attack(image, "padding_0.25", 0))
    assert padded.shape == (90, 150, 3) and np.array_equal(padded[15:75, 25:125], array)
    pixel = np.asarray(attacks.apply_attack(Image.fromarray(np.tile(array[:50, :50], (2, 2, 1))),
                                            "pixelization_0.1", 0))
    blocks = pixel.reshape(10, 10, 10, 10, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # constant 10x10 blocks
    meme = np.asarray(attacks.apply_attack(image, "meme_format_0.2", 0))
    assert meme.shape == (72, 100, 3) and np.array_equal(meme[12:], array)
    assert np.array_equal(np.asarray(attacks.apply_attack(image, "perspective_0", 0)), array)
    warped = attacks.apply_attack(image, "perspective_0.3", 0)
    assert warped.size == image.size and not np.array_equal(np.asarray(warped), array)
    emoji = np.asarray(attacks.apply_attack(image, "emoji_overlay_0.4", 0))
    rows, cols = np.nonzero(np.any(emoji != array, axis=2))
    assert 0 < rows.max() - rows.min() < 24 and 0 < cols.max() - cols.min() < 24  # within 0.4 * 60 px
    pasted = attacks.apply_attack(image, "background_paste_0.5", 0)
    assert 0.8 * 100 <= pasted.width <= 1.25 * 100
    frame = attacks.apply_attack(image, "screenshot_frame", 0)
    assert frame.width == 100 and frame.height > 60


def test_chains_compose_two_or_three_edits(photo):
    image = photo(64, 48, seed=11)
    seen = set()
    for index in range(1, 6):
        out, description = attacks.apply_attack_described(image, f"chain_{index}", seed=5)
        assert out.mode == "RGB" and description.startswith("chain[")
        assert 2 <= description.count(" > ") + 1 <= 3
        seen.add(description)
    assert len(seen) == 5  # chain_1 ... chain_5 differ under one seed


# --- random_edit -----------------------------------------------------------------------------------------------

FAMILY_MARKERS = {
    "noise": "noise(", "blur": ("blur(", "median_filter("), "jpeg": "jpeg(", "scale": "scale(", "crop": "crop(",
    "rotation": "rotation(", "shear": "shear(", "enhancement": "_enhancement(", "text": "text_overlay",
    "overlay": "emoji_overlay(", "flip": "_flip", "padding": "padding(",
    "paste": ("background_paste(", "screenshot_frame"), "perspective": "perspective(",
    "pixelization": "pixelization(", "grayscale": "grayscale", "meme": "meme_format(", "chain": "chain[",
}


def test_random_edit_covers_every_family_and_is_seeded(photo):
    assert set(FAMILY_MARKERS) == set(attacks.RANDOM_EDITS) | {"chain"}
    image = photo(64, 48, seed=12)
    rng = np.random.default_rng(0)
    descriptions = []
    for _ in range(400):
        out, description = attacks.random_edit(image, rng)
        assert out.mode == "RGB" and out.width >= 1 and out.height >= 1
        descriptions.append(description)
    text = "\n".join(descriptions)
    for family, markers in FAMILY_MARKERS.items():
        markers = markers if isinstance(markers, tuple) else (markers,)
        assert any(marker in text for marker in markers), family
    again = [attacks.random_edit(image, np.random.default_rng(7)) for _ in range(2)]
    assert again[0][1] == again[1][1] and np.array_equal(np.asarray(again[0][0]), np.asarray(again[1][0]))
    assert {attacks.random_edit(image, np.random.default_rng(1), families=["flip"])[1]} <= {
        "horizontal_flip", "vertical_flip"}
    with pytest.raises(ValueError, match="unknown edit family"):
        attacks.random_edit(image, rng, families=["warp"])


def test_random_edit_on_odd_images(tmp_path, photo):
    rng = np.random.default_rng(1)
    for kind, image in _odd_images(tmp_path, photo).items():
        for _ in range(60):
            out, _ = attacks.random_edit(image, rng)
            assert out.mode == "RGB" and out.width >= 1 and out.height >= 1, kind
