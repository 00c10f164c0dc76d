"""Triplet training (seed 004): the seeded sampler, the dataset, the networks, a frozen backbone."""
import numpy as np
import pytest
import torch

from finetuning.augment import simclr_transform
from finetuning.config import FinetuneConfig
from finetuning.data import ImageBank, TripletDataset, sample_triplets
from finetuning.lars import lars_param_groups
from finetuning.models import SiameseNet, TrainingModel, build_networks


def test_sampler_positives_share_identity_negatives_do_not():
    identities = ["a", "a", "a", "b", "b", "c", "d"]
    triplets = sample_triplets(identities, seed=1, epoch=0)
    assert sorted(triplets[:, 0]) == list(range(len(identities)))   # every item is an anchor once
    for anchor, positive, negative in triplets:
        assert identities[positive] == identities[anchor]
        assert identities[negative] != identities[anchor]
        if identities.count(identities[anchor]) > 1:
            assert positive != anchor                                # another copy when there is one
        else:
            assert positive == anchor                                # else a second view of itself


def test_sampler_is_seeded():
    identities = [str(i // 2) for i in range(20)]
    a = sample_triplets(identities, seed=3, epoch=1)
    assert np.array_equal(a, sample_triplets(identities, seed=3, epoch=1))
    assert not np.array_equal(a, sample_triplets(identities, seed=3, epoch=2))
    assert not np.array_equal(a, sample_triplets(identities, seed=4, epoch=1))


def test_sampler_needs_two_identities():
    with pytest.raises(ValueError, match="two identities"):
        sample_triplets(["x", "x", "x"], seed=0)


def test_triplet_dataset(tmp_path, photo):
    for i in range(3):
        photo(60, 50, seed=i).save(tmp_path / f"p{i}.png")
        photo(60, 50, seed=i).rotate(10).save(tmp_path / f"p{i}_rot.png")
    paths = sorted(tmp_path.glob("*.png"))
    bank = ImageBank(paths, identities=[path.stem.split("_")[0] for path in paths])  # labels, as labels.csv gives
    assert ImageBank(paths).identities == [str(path) for path in paths]  # without labels: each image its own
    dataset = TripletDataset(bank, simclr_transform(32), seed=0)
    assert len(dataset) == 6
    a, p, n, index = dataset[0]
    assert a.shape == p.shape == n.shape == (3, 32, 32) and index == 0
    anchor, positive, negative = dataset.triplets[0]
    assert bank.identities[anchor] == bank.identities[positive] != bank.identities[negative]


def test_siamese_net_gives_unit_128d_descriptors():
    net = SiameseNet(seed=0)
    out = net(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert torch.equal(SiameseNet(seed=0).fc[0].weight, net.fc[0].weight)


def test_resnet_triplet_head_and_frozen_backbone():
    config = FinetuneConfig("d", "l", mode="triplet", backbone="ResNet18 1x", model="random",
                            freeze_backbone=True)
    net, head, info = build_networks(config)
    assert head is None and info["start"] == "random"
    assert net.embedding_dim == 128 and net.config["normalize"]
    model = TrainingModel(net, head, freeze_backbone=True)
    trainable = {id(p) for group in lars_param_groups(model, 1e-6) for p in group["params"]}
    assert trainable == {id(p) for p in net.projection.parameters()}
    model.train()
    assert not net.backbone.training and net.projection.training     # frozen BN statistics too
    out = model(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
