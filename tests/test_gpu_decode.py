"""The GPU input path on CPU tensors: the matrix-product LANCZOS resize against Pillow itself, the JPEG header
parser and the fallbacks against load_image + the CPU transform, and the --decode errors on a CPU device."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import extract_features as cli
from conftest import exit_code
from extractor.extract import extract_features
from extractor.gpu_decode import GpuJpegItem, Packed, jpeg_header, lanczos_resize_crop, pack, resolve_decode
from extractor.transforms import ImageTransform, imagenet_preprocessing, simclr_preprocessing
from helpers.image_io import load_image


def _pil_resize_crop(array, size, box):
    """Pillow's pixels: ``Image.resize((w, h), LANCZOS)`` then ``crop``."""
    image = Image.fromarray(array).resize((size[1], size[0]), Image.LANCZOS)
    top, left, h, w = box
    return np.asarray(image.crop((left, top, left + w, top + h)))


@pytest.mark.parametrize("in_size,size,box", [
    ((321, 481), (256, 256), (16, 16, 224, 224)),     # BSDS500 landscape -> the ImageNet preprocessing
    ((481, 321), (256, 256), (16, 16, 224, 224)),     # portrait (Pillow >= 12.3 runs the vertical pass first)
    ((37, 53), (256, 300), (0, 0, 256, 300)),         # upscaling, no crop
    ((200, 90), (200, 45), (10, 5, 150, 30)),         # height unchanged: one pass
    ((90, 200), (30, 200), (3, 0, 20, 200)),          # width unchanged
    ((1000, 13), (299, 299), (0, 0, 299, 299)),       # extreme aspect ratio
    ((64, 64), (64, 64), (8, 8, 48, 48)),             # no resize at all
])
def test_matmul_lanczos_equals_pillow_exactly(in_size, size, box):
    rng = np.random.default_rng(in_size[0] * 7 + in_size[1])
    images = rng.integers(0, 256, (3,) + in_size + (3,), dtype=np.uint8)
    images[0] = np.clip(np.linspace(-40, 300, in_size[1])[None, :, None] + np.zeros(in_size + (3,)), 0, 255)
    got = lanczos_resize_crop(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), size, box)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, 3, box[2], box[3])
    for k in range(3):
        np.testing.assert_array_equal(got[k].permute(1, 2, 0).numpy(), _pil_resize_crop(images[k], size, box))


def _jpeg_bytes(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def test_jpeg_header_reads_size_and_refuses_what_nvjpeg_would_decode_differently(photo):
    rgb = photo(97, 61).convert("RGB")
    assert jpeg_header(_jpeg_bytes(rgb)) == (rgb.height, rgb.width, 3, 1)
    assert jpeg_header(_jpeg_bytes(rgb, progressive=True))[:2] == (rgb.height, rgb.width)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert jpeg_header(_jpeg_bytes(rgb, exif=exif.tobytes()))[3] == 6
    assert jpeg_header(_jpeg_bytes(rgb.convert("L"))) is None  # grayscale
    assert jpeg_header(_jpeg_bytes(rgb.convert("CMYK"))) is None  # CMYK (Adobe marker, 4 components)
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    assert jpeg_header(buffer.getvalue()) is None
    assert jpeg_header(b"\xff\xd8 not really a jpeg") is None
    assert jpeg_header(b"") is None


@pytest.fixture
def mixed_folder(tmp_path):
    """Plain JPEGs, an EXIF-rotated one, a grayscale and a CMYK JPEG, a PNG, a corrupt .jpg."""
    from conftest import synthetic_photo

    files = []
    for i, (w, h) in enumerate([(97, 61), (61, 97), (300, 260)]):
        files.append(tmp_path / f"plain{i}.jpg")
        synthetic_photo(w, h, seed=i).convert("RGB").save(files[-1], quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    files.append(tmp_path / "rotated.jpg")
    synthetic_photo(120, 70, seed=5).convert("RGB").save(files[-1], exif=exif.tobytes())
    files.append(tmp_path / "gray.jpg")
    synthetic_photo(80, 90, seed=6).convert("L").save(files[-1])
    files.append(tmp_path / "cmyk.jpg")
    synthetic_photo(80, 90, seed=7).convert("CMYK").save(files[-1])
    files.append(tmp_path / "image.png")
    synthetic_photo(70, 50, seed=8).save(files[-1])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    return files, bad


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_gpu_path_on_cpu_gives_the_cpu_paths_pixels_and_falls_back(mixed_folder, share):
    """On a CPU device decode_jpeg is libjpeg's, so every pixel must equal load_image + to_uint8."""
    files, bad = mixed_folder
    transform = ImageTransform(imagenet_preprocessing())
    item = GpuJpegItem(transform, "cpu", nvjpeg_share=share)
    encoded = [item(path, None) for path in files]
    kinds = {path.name: e.kind for path, e in zip(files, encoded)}
    expected_jpeg = "jpeg" if share == 1.0 else "decoded"
    assert [kinds[f"plain{i}.jpg"] for i in range(3)] == [expected_jpeg] * 3
    for name in ("rotated.jpg", "gray.jpg", "cmyk.jpg", "image.png"):  # the CPU loader (EXIF, modes, formats)
        assert kinds[name] == "decoded"
    indices, pixels, failures = item.prepare_batch(list(range(len(files))), pack(encoded))
    assert indices == list(range(len(files))) and failures == []
    reference = torch.stack([transform.to_uint8(load_image(path)) for path in files])
    assert torch.equal(pixels, reference)
    with pytest.raises(Exception, match="broken.jpg"):
        item(bad, None)


def test_gpu_path_crop_larger_than_the_image_uses_the_cpu_pixels(tmp_path):
    from conftest import synthetic_photo

    from extractor.transforms import Preprocessing

    path = tmp_path / "small.jpg"
    synthetic_photo(40, 30, seed=1).convert("RGB").save(path)
    transform = ImageTransform(Preprocessing(resize=(100, 100), crop=150))  # the crop pads (torchvision's zeros)
    item = GpuJpegItem(transform, "cpu", nvjpeg_share=1.0)
    e = item(path, None)
    assert e.kind == "pixels"
    ok = GpuJpegItem(ImageTransform(simclr_preprocessing()), "cpu", nvjpeg_share=1.0)
    assert ok(path, None).kind == "jpeg"  # shorter side 256 then crop 224 fits
    packed = pack([e, e])
    assert isinstance(packed, Packed)
    _, pixels, _ = item.prepare_batch([0, 1], packed)
    expected = transform.to_uint8(load_image(path))
    assert torch.equal(pixels[0], expected) and torch.equal(pixels[1], expected)


def test_decode_gpu_on_a_cpu_device_is_a_clear_error(tmp_path, capsys):
    transform = ImageTransform(imagenet_preprocessing())
    assert resolve_decode("auto", "cpu", transform) == "cpu"
    assert resolve_decode("cpu", "cpu", transform) == "cpu"
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_decode("gpu", "cpu", transform)
    with pytest.raises(ValueError, match="decode must be one of"):
        extract_features("ResNet18 1x", str(tmp_path), device="cpu", decode="fast")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 30)).save(folder / "a.jpg")
    code = exit_code(cli.main, ["--algo", "ResNet18 1x", "--dataset", str(folder), "--device", "cpu", "--decode",
                                "gpu", "--weights", "random", "--out", str(tmp_path / "F"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --decode gpu needs a CUDA device")


def test_gpu_path_refuses_a_truncated_jpeg_like_the_cpu_path(tmp_path):
    """nvjpeg is never handed a JPEG without its end marker: the CPU loader decides, and skips it."""
    from conftest import synthetic_photo

    from helpers.image_io import ImageLoadError

    path = tmp_path / "cut.jpg"
    synthetic_photo(120, 90, seed=3).save(path, quality=90)
    data = path.read_bytes()
    item = GpuJpegItem(ImageTransform(imagenet_preprocessing()), "cpu", nvjpeg_share=1.0)
    assert item(path, None).kind == "jpeg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        item(path, None)
