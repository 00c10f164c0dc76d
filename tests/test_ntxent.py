"""NT-Xent and KoLeo against hand-written references (plain loops in float64)."""
import math

import numpy as np
import pytest
import torch

from finetuning.losses import koleo_loss, nt_xent_loss, triplet_loss


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_nt_xent(z1, z2, temperature):
    """SimCLR's loss written out: for each of the 2N embeddings, -log softmax of its positive over all others."""
    z = _normalize(np.concatenate([z1, z2]).astype(np.float64))
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        p = a + n if a < n else a - n
        denominator = sum(math.exp(z[a] @ z[k] / temperature) for k in range(2 * n) if k != a)
        total += -math.log(math.exp(z[a] @ z[p] / temperature) / denominator)
    return total / (2 * n)


def reference_koleo(z1, z2):
    z = _normalize(np.concatenate([z1, z2]).astype(np.float64))
    n = len(z1)
    values = []
    for a in range(2 * n):
        p = a + n if a < n else a - n
        values.append(min(np.linalg.norm(z[a] - z[k]) for k in range(2 * n) if k not in (a, p)))
    return -float(np.mean(np.log(values)))


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("n,d", [(2, 3), (7, 16)])
def test_nt_xent_matches_reference(temperature, n, d):
    rng = np.random.default_rng(n * 100 + d)
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    got = nt_xent_loss(torch.tensor(z1), torch.tensor(z2), temperature=temperature)
    assert got.item() == pytest.approx(reference_nt_xent(z1, z2, temperature), rel=1e-9, abs=1e-9)


def test_nt_xent_is_scale_invariant_and_rewards_matching_views():
    rng = np.random.default_rng(1)
    z1 = torch.tensor(rng.normal(size=(8, 10)))
    noise = torch.tensor(rng.normal(size=(8, 10)))
    close = nt_xent_loss(z1, z1 + 0.01 * noise, 0.1)
    far = nt_xent_loss(z1, noise, 0.1)
    assert close < far
    assert nt_xent_loss(3 * z1, 0.5 * noise, 0.1).item() == pytest.approx(far.item(), rel=1e-9)


def test_nt_xent_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    z1 = torch.tensor(rng.normal(size=(4, 5)), requires_grad=True)
    z2 = torch.tensor(rng.normal(size=(4, 5)))
    nt_xent_loss(z1, z2, 0.2).backward()
    eps = 1e-6
    numeric = np.zeros((4, 5))
    base1, base2 = z1.detach().numpy(), z2.numpy()
    for i in range(4):
        for j in range(5):
            plus, minus = base1.copy(), base1.copy()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (reference_nt_xent(plus, base2, 0.2) - reference_nt_xent(minus, base2, 0.2)) / (2 * eps)
    np.testing.assert_allclose(z1.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        nt_xent_loss(torch.ones(3, 4), torch.ones(3, 4), temperature=0)


def test_koleo_matches_reference():
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    got = koleo_loss(torch.tensor(z1), torch.tensor(z2), eps=0.0)
    assert got.item() == pytest.approx(reference_koleo(z1, z2), rel=1e-9)


def test_koleo_prefers_spread_out_descriptors():
    rng = np.random.default_rng(4)
    spread = torch.tensor(rng.normal(size=(16, 8)))
    clumped = torch.tensor(rng.normal(size=(1, 8))) + 0.05 * torch.tensor(rng.normal(size=(16, 8)))
    assert koleo_loss(spread, spread + 0.01) < koleo_loss(clumped, clumped + 0.001)


def test_triplet_loss_matches_torch_and_hand_values():
    rng = np.random.default_rng(5)
    a, p, n = (torch.tensor(rng.normal(size=(9, 4))) for _ in range(3))
    expected = torch.nn.TripletMarginLoss(margin=0.3, eps=0.0)(a, p, n)
    assert triplet_loss(a, p, n, margin=0.3).item() == pytest.approx(expected.item(), rel=1e-6)
    # d(a,p) = 1, d(a,n) = 2: loss = max(0, 1 - 2 + margin)
    a1, p1, n1 = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert triplet_loss(a1, p1, n1, margin=1.5).item() == pytest.approx(0.5)
    assert triplet_loss(a1, p1, n1, margin=0.5).item() == 0.0


def _bf16_product_loss(z1, z2, temperature):
    """The former implementation: the similarity matrix computed under autocast (bf16 on CPU), the cross entropy
    on its float32 copy. Kept here to show that the test below detects it."""
    z1, z2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    n = len(z1)
    anchors = torch.cat([z1, z2])
    logits = (anchors @ anchors.t() / temperature).float()
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_nt_xent_similarities_stay_float32_under_bf16_autocast(input_dtype):
    rng = np.random.default_rng(6)
    n, d, temperature = 32, 128, 0.05
    base = rng.normal(size=(n, d))
    z1 = torch.tensor(base, dtype=torch.float32).to(input_dtype)
    z2 = torch.tensor(base + 3.0 * rng.normal(size=(n, d)), dtype=torch.float32).to(input_dtype)
    # the reference sees exactly the values the loss receives (bf16 inputs are exact in float64)
    expected = reference_nt_xent(z1.double().numpy(), z2.double().numpy(), temperature)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = nt_xent_loss(z1, z2, temperature=temperature)
        old = _bf16_product_loss(z1, z2, temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the bf16 similarity matrix misses by over 100x that tolerance (logit errors of ~0.05 at temperature 0.05)
    assert abs(old.item() - expected) > 100 * 1e-6 * expected


def test_koleo_distances_stay_float32_under_bf16_autocast():
    rng = np.random.default_rng(7)
    z1 = torch.tensor(rng.normal(size=(16, 64)), dtype=torch.float32)
    z2 = torch.tensor(rng.normal(size=(16, 64)), dtype=torch.float32)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = koleo_loss(z1, z2, eps=0.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_koleo(z1.double().numpy(), z2.double().numpy()), rel=1e-5)
