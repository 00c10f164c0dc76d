"""Distributed training on CPU (gloo, 2 processes through torchrun) equals one process on the global batch.

The gradients of NT-Xent + KoLeo over the gathered batch (with synchronised batch norm) and of the triplet loss
must equal those of a single process with plain batch norm on the whole batch; two deliberately broken variants
(per-process batch norm, a gather without gradient) must not, which shows the comparison has teeth.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetuning.ddp_check import SAMPLER_ITEMS, SPECS, reference_gradients
from finetuning.distributed import free_port

REPO = Path(__file__).resolve().parent.parent


def torchrun(args, tmp_path, nproc=2, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port())] + args
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torchrun(["-m", "finetuning.ddp_check", "--out", str(out)], out)
    with np.load(out / "ddp_grads.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    samplers = [np.load(out / f"sampler_rank{r}.npy", allow_pickle=False) for r in range(2)]
    return arrays, samplers


def _section(arrays, kind, variant, part):
    prefix = f"{kind}/{variant}/{part}/"
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}


@pytest.mark.parametrize("kind", list(SPECS))
def test_gradients_equal_single_process_on_global_batch(ddp_run, kind):
    arrays, _ = ddp_run
    assert int(arrays["world_size"]) == 2
    loss, grads, stats = reference_gradients(kind)
    distributed = _section(arrays, kind, "full", "grad")
    assert set(distributed) == set(grads) and len(grads) >= 10
    for name, value in grads.items():
        np.testing.assert_allclose(distributed[name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    assert float(arrays[f"{kind}/full/loss"]) == pytest.approx(loss, rel=1e-9)
    # Synchronised batch norm also tracks the running statistics of the global batch.
    bn = _section(arrays, kind, "full", "bn")
    assert set(bn) == set(stats)
    for name, value in stats.items():
        np.testing.assert_allclose(bn[name], value, rtol=1e-9, atol=1e-12, err_msg=name)


def _max_relative_difference(a, b):
    return max(np.abs(a[k] - b[k]).max() / (np.abs(b[k]).max() + 1e-12) for k in b)


@pytest.mark.parametrize("kind,variant", [("contrastive", "no_syncbn"), ("contrastive", "no_grad_gather"),
                                          ("triplet", "no_syncbn")])
def test_broken_variants_are_detected(ddp_run, kind, variant):
    arrays, _ = ddp_run
    _, grads, _ = reference_gradients(kind)
    assert _max_relative_difference(_section(arrays, kind, variant, "grad"), grads) > 1e-3


def test_distributed_sampler_shards_are_disjoint_and_reshuffled(ddp_run):
    _, (rank0, rank1) = ddp_run
    share = SAMPLER_ITEMS // 2                        # drop_last: every rank gets the same number of items
    for epoch in range(2):
        assert len(rank0[epoch]) == len(rank1[epoch]) == share
        assert not set(rank0[epoch]) & set(rank1[epoch])
        assert set(rank0[epoch]) | set(rank1[epoch]) <= set(range(SAMPLER_ITEMS))
    assert list(rank0[0]) != list(rank0[1])          # set_epoch reshuffles


def test_finetune_under_torchrun_two_cpu_processes(tmp_path):
    """The real script under torchrun: 2 gloo processes share the global batch, rank 0 writes the outputs."""
    from conftest import synthetic_photo

    train = tmp_path / "train"
    train.mkdir()
    for i in range(8):
        synthetic_photo(48, 40, seed=i).save(train / f"t{i}.png")
    log_dir = tmp_path / "log"
    result = torchrun(["finetune.py", "--train_dataset", str(train), "--log_dir", str(log_dir), "--mode", "copy_detection",
              "--backbone", "ResNet18 1x", "--model", "random", "--size", "32", "--batch_size", "2", "--epochs", "1",
              "--workers", "0", "--device", "cpu"], tmp_path)
    assert "global batch 4" in result.stderr and "2 process(es)" in result.stderr
    checkpoints = list(Path(f"{log_dir}_models").glob("*/epoch_1.pth"))
    assert len(checkpoints) == 1
    from extractor.models import load_checkpoint

    net, _, _ = load_checkpoint(checkpoints[0])
    assert net.config["pooling"] == "gem"
    from helpers.results import read_json

    best = read_json(log_dir / "best_epoch.json")
    assert best["best_epoch"] == 1 and best["history"][0]["train_loss"] > 0
