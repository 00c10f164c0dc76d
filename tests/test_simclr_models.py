"""SimCLR model definitions, paths, loader errors and the downloader (network replaced by fakes)."""
import io
import os
import subprocess
import sys
from pathlib import Path
from urllib.error import HTTPError, URLError

import numpy as np
import pytest
import torch

import SimCLRv1
import SimCLRv2
from SimCLRv2 import download_utils
from SimCLRv2.resnet import avg_pool_resnet_d, max_pool_same

REPO_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["r50_1x_sk0", "r50_1x_sk1"])
def test_v2_features_and_projection(model):
    resnet, head = SimCLRv2.get_resnet(*SimCLRv2.parse_model_name(model))
    assert not resnet.training and not head.training
    with torch.no_grad():
        features = resnet(torch.rand(2, 3, 32, 32))
        assert features.shape == (2, 2048)
        assert head(features).shape == (2, 128)
        assert head(features, num_layers=1).shape == (2, 2048)


def test_v1_features_and_two_layer_head():
    resnet, head = SimCLRv1.get_resnet(width_multiplier=1)
    assert len(head.layers) == 2
    with torch.no_grad():
        assert head(resnet(torch.rand(1, 3, 32, 32))).shape == (1, 128)


def _millions(module):
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("build, expected", [
    # Encoder sizes published with the checkpoints (SimCLR v1 paper Table 1, SimCLRv2 paper Table 1;
    # ResNet-50 without its 2M-parameter fc layer is 23.5M).
    (lambda: SimCLRv2.get_resnet(50, 1, 0.0)[0], 23.5),
    (lambda: SimCLRv2.get_resnet(50, 1, SimCLRv2.SK_RATIO)[0], 35),
    (lambda: SimCLRv2.get_resnet(50, 2, SimCLRv2.SK_RATIO)[0], 140),
    (lambda: SimCLRv2.get_resnet(101, 1, SimCLRv2.SK_RATIO)[0], 65),
    (lambda: SimCLRv2.get_resnet(152, 3, SimCLRv2.SK_RATIO)[0], 795),
    (lambda: SimCLRv1.get_resnet(2)[0], 94),
    (lambda: SimCLRv1.get_resnet(4)[0], 375),
])
def test_parameter_counts_match_the_papers(build, expected):
    with torch.device("meta"):  # no memory for the 795M-parameter model
        assert _millions(build()) == pytest.approx(expected, rel=0.01)


def test_model_names():
    assert SimCLRv2.parse_model_name("r50_2x_sk1") == (50, 2, 0.0625)
    assert SimCLRv2.parse_model_name("r152_3x_sk0") == (152, 3, 0.0)
    for bad in ("r50_2x", "resnet50", "r50_2x_sk2"):
        with pytest.raises(ValueError, match="r50_2x_sk1"):
            SimCLRv2.parse_model_name(bad)
    with pytest.raises(ValueError, match="depth"):
        SimCLRv2.get_resnet(depth=34)
    with pytest.raises(ValueError, match="1x, 4x|choose one of"):
        SimCLRv1.build_model("3x")


@pytest.mark.parametrize("height, width", [(8, 8), (7, 9), (5, 6)])
def test_pooling_matches_tensorflow(height, width):
    """TF's asymmetric SAME padding (max pool) and the ResNet-D average pool, as the official code runs them."""
    import tensorflow as tf  # only this test needs it here (a dev requirement)
    x = np.random.default_rng(height).standard_normal((2, height, width, 3)).astype(np.float32)
    ours = torch.from_numpy(x.transpose(0, 3, 1, 2))
    expected = tf.nn.max_pool2d(x, 3, 2, "SAME").numpy()
    np.testing.assert_allclose(max_pool_same(ours).numpy().transpose(0, 2, 3, 1), expected, rtol=1e-6)
    expected = tf.nn.avg_pool2d(x, 2, 1, "SAME").numpy()  # padded cells are not counted
    np.testing.assert_allclose(avg_pool_resnet_d(ours, 1).numpy().transpose(0, 2, 3, 1), expected, rtol=1e-5)
    padded = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])  # fixed_padding(inputs, 2) then VALID
    expected = tf.nn.avg_pool2d(padded, 2, 2, "VALID").numpy()
    np.testing.assert_allclose(avg_pool_resnet_d(ours, 2).numpy().transpose(0, 2, 3, 1), expected, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Paths and the loader
# ----------------------------------------------------------------------------------------------------------
def test_checkpoint_paths():
    path = SimCLRv2.checkpoint_path()
    assert path.is_absolute()
    assert path == REPO_ROOT / "SimCLRv2" / "torch_checkpoints" / "pretrained" / "r50_2x_sk1_ema.pth"
    assert SimCLRv2.checkpoint_path("r152_3x_sk1", "finetuned_10pct", ema=False).name == "r152_3x_sk1.pth"
    v1_path = SimCLRv1.checkpoint_path("2x", "pretrain")
    assert v1_path == REPO_ROOT / "SimCLRv1" / "torch_checkpoints" / "pretrain" / "2x.pth"
    with pytest.raises(ValueError, match="r50_2x_sk1"):
        SimCLRv2.checkpoint_path("r50_3x_sk1")
    with pytest.raises(ValueError, match="finetune_10pct"):
        SimCLRv1.checkpoint_path("2x", "finetuned_10pct")


def test_download_writes_where_the_loader_reads():
    for category, model in (("pretrained", "r50_2x_sk1"), ("supervised", "r101_1x_sk0")):
        assert SimCLRv2.RELEASE.torch_path(model, category, True) == SimCLRv2.checkpoint_path(model, category, True)
        assert SimCLRv2.RELEASE.tf_dir(model, category) == REPO_ROOT / "SimCLRv2" / "tf_checkpoints" / category / model
    assert SimCLRv1.RELEASE.file_names("4x", "finetune_10pct")[2] == "model.ckpt-470.data-00000-of-00001"
    assert SimCLRv2.RELEASE.file_names("r50_2x_sk1", "finetuned_1pct")[3] == "model.ckpt-751.index"
    assert SimCLRv2.RELEASE.base_url("r50_2x_sk1", "pretrained") == \
        "https://storage.googleapis.com/simclr-checkpoints/simclrv2/pretrained/r50_2x_sk1/"


def test_missing_checkpoint_error_gives_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        SimCLRv2.load_pretrained(path=tmp_path / "absent.pth")
    assert "python3 SimCLRv2/download.py --model r50_2x_sk1 --simclr_category pretrained --ema True" in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        SimCLRv2.load_pretrained("r50_1x_sk0", "finetuned_100pct", ema=False, root=tmp_path)
    assert (f"python3 SimCLRv2/download.py --model r50_1x_sk0 --simclr_category finetuned_100pct --ema False "
            f"--out-dir {tmp_path.resolve()}") in str(info.value)
    with pytest.raises(FileNotFoundError, match="python3 SimCLRv1/download.py --model 4x --category pretrain"):
        SimCLRv1.load_pretrained("4x", path=tmp_path / "absent.pth")


# ----------------------------------------------------------------------------------------------------------
# Downloader
# ----------------------------------------------------------------------------------------------------------
def test_offline_prints_one_clear_message(monkeypatch, tmp_path, capsys):
    def unreachable(request, timeout=None):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    code = SimCLRv2.main(["--model", "r50_2x_sk1", "--out-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert captured.err.count("error:") == 1
    base = "https://storage.googleapis.com/simclr-checkpoints/simclrv2/pretrained/r50_2x_sk1/"
    for name in ("checkpoint", "graph.pbtxt", "model.ckpt-250228.data-00000-of-00001", "model.ckpt-250228.index",
                 "model.ckpt-250228.meta"):
        assert base + name in captured.err
    assert str(tmp_path.resolve() / "tf_checkpoints" / "pretrained" / "r50_2x_sk1") in captured.err
    assert "--from-dir" in captured.err and "name resolution" in captured.err

    code = SimCLRv1.main(["--model", "4x", "--category", "finetune_100pct", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "https://storage.googleapis.com/simclr-checkpoints/simclrv1/finetune_100pct/4x/model.ckpt-4692.index" in err


class FakeResponse(io.BytesIO):
    def __init__(self, data, status):
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


def fake_server(files, requests, honour_range=True):
    """A ``urlopen`` serving ``files`` ({url: bytes}), recording the Range headers it receives."""
    def urlopen(request, timeout=None):
        url, wanted = request.full_url, request.get_header("Range")
        requests.append((url, wanted))
        if url not in files:
            raise HTTPError(url, 404, "Not Found", {}, None)
        data = files[url]
        if wanted and honour_range:
            start = int(wanted.split("=")[1].rstrip("-"))
            return FakeResponse(data[start:], 206)
        return FakeResponse(data, 200)
    return urlopen


def test_download_resumes_a_partial_file(monkeypatch, tmp_path):
    data = os.urandom(3000)
    requests = []
    monkeypatch.setattr("urllib.request.urlopen", fake_server({"http://x/f.bin": data}, requests))
    (tmp_path / "f.bin.part").write_bytes(data[:1000])
    download_utils.download_file("http://x/f.bin", tmp_path / "f.bin", progress=False, chunk_size=512)
    assert (tmp_path / "f.bin").read_bytes() == data and not (tmp_path / "f.bin.part").exists()
    assert requests == [("http://x/f.bin", "bytes=1000-")]
    download_utils.download_file("http://x/f.bin", tmp_path / "f.bin", progress=False)  # present: no request
    assert len(requests) == 1
    # A server that ignores Range sends the whole file again: the partial file is replaced, not appended to.
    monkeypatch.setattr("urllib.request.urlopen", fake_server({"http://x/f.bin": data}, requests, False))
    (tmp_path / "g.part").write_bytes(data[:1000])
    download_utils.download_file("http://x/f.bin", tmp_path / "g", progress=False)
    assert (tmp_path / "g").read_bytes() == data


def test_missing_remote_file_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("urllib.request.urlopen", fake_server({}, []))
    with pytest.raises(download_utils.RemoteFileError, match="HTTP 404"):
        download_utils.download_file("http://x/none", tmp_path / "none", progress=False)
    assert SimCLRv2.main(["--model", "r152_3x_sk1", "--simclr_category", "supervised",
                          "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "supervised/r152_3x_sk1/checkpoint" in err and "Traceback" not in err


def test_scripts_run_from_root_and_from_their_folder():
    """``python3 SimCLRv2/download.py`` and ``cd SimCLRv2; python3 download.py`` both work; TF is not imported."""
    env = dict(os.environ, PYTHONPATH="")
    inside = subprocess.run([sys.executable, "download.py", "--help"], cwd=REPO_ROOT / "SimCLRv2", env=env,
                            capture_output=True, text=True, timeout=120)
    assert inside.returncode == 0, inside.stderr
    assert "--simclr_category" in inside.stdout and "r152_3x_sk1" in inside.stdout and "--from-dir" in inside.stdout
    # -X importtime lists every imported module on stderr: TensorFlow must wait for the conversion.
    root = subprocess.run([sys.executable, "-X", "importtime", "SimCLRv1/download.py", "--help"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert root.returncode == 0, root.stderr
    assert "finetune_100pct" in root.stdout and "--ema" not in root.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in root.stderr.splitlines() if "|" in line}
    assert "torch" in imported and "tensorflow" not in imported


def test_interrupted_download_is_not_a_checkpoint(tmp_path):
    from SimCLRv2.convert import find_checkpoint_prefix
    from SimCLRv2.release import has_checkpoint

    (tmp_path / "model.ckpt-751.index").write_bytes(b"")
    (tmp_path / "model.ckpt-751.data-00000-of-00001.part").write_bytes(b"")
    assert not has_checkpoint(tmp_path, 751)
    (tmp_path / "model.ckpt-751.data-00000-of-00001").write_bytes(b"")
    assert find_checkpoint_prefix(tmp_path, 751) == tmp_path / "model.ckpt-751"
    assert find_checkpoint_prefix(tmp_path / "model.ckpt-751") == tmp_path / "model.ckpt-751"
