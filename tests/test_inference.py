"""Batch-norm folding (extractor.inference): same outputs as the network it comes from, the original untouched,
and no folding where a convolution's output is also used elsewhere."""
import torch
import torchvision
from torch import nn

from extractor.inference import fold_batch_norms


def _randomise_batch_norms(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


def test_folded_resnet_and_timm_efficientnet_give_the_same_embeddings():
    import timm

    torch.manual_seed(0)
    for model in (torchvision.models.resnet18(num_classes=10),
                  timm.create_model("tf_efficientnet_lite0", num_classes=0)):
        model = _randomise_batch_norms(model)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded, count = fold_batch_norms(model, torch.rand(2, 3, 64, 64))
        batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert count == batch_norms and count > 0
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        x = torch.rand(3, 3, 96, 80)
        with torch.no_grad():
            expected, got = model(x), folded(x)
        assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched


class _SharedConv(nn.Module):
    """A convolution whose output feeds a batch norm and a skip connection: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y).mean(dim=(2, 3))


class _BatchNormFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(self.bn(x)).mean(dim=(2, 3))


def test_nothing_is_folded_where_it_would_change_the_output():
    x = torch.rand(2, 3, 16, 16)
    shared = _randomise_batch_norms(_SharedConv())
    folded, count = fold_batch_norms(shared, x)
    assert folded is shared and count == 0
    first = _randomise_batch_norms(_BatchNormFirst())
    folded, count = fold_batch_norms(first, x)
    assert folded is first and count == 0
