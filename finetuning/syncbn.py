"""Synchronised batch normalisation on every device.

``torch.nn.SyncBatchNorm`` only runs on GPUs: in torch 2.14.1, a forward pass in training mode with 2 gloo
processes on CPU tensors raises ``ValueError: SyncBatchNorm expected input tensor to be on GPU or XPU or
privateuseone`` (checked again for issue 16, 2-D and 4-D inputs). That is why this module keeps its own
:class:`SyncBatchNorm`, which computes the batch statistics of the *global* batch with a differentiable
all-reduce, on any device and backend (gloo on CPU included), so a DDP run normalises exactly as one process on
the whole batch would, and the distributed tests (2 CPU processes) exercise the synchronised path. Drop it when
torch's layer accepts CPU tensors.

:func:`convert_sync_batchnorm` swaps every batch-norm layer of a model: for ``torch.nn.SyncBatchNorm`` (fused
kernels) on CUDA, for this class elsewhere. Custom affine layouts (a scale without a shift, as in SimCLR's projection head) are kept.
"""
import torch
from torch import nn

from .distributed import all_reduce_sum_with_grad, is_initialized, world_size


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the global batch of all processes (any input rank >= 2, any device)."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input):
        if not (self.training and is_initialized() and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        x64 = input.double()
        count = torch.tensor([input.numel() // channels], dtype=torch.float64, device=input.device)
        totals = all_reduce_sum_with_grad(torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (x64 - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        out = out.to(input.dtype)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


def _copy_into(new, old):
    new.weight, new.bias = old.weight, old.bias
    if old.track_running_stats:
        new.running_mean, new.running_var = old.running_mean, old.running_var
        new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)
    return new


def convert_sync_batchnorm(module, device_type="cpu"):
    """Replace every batch-norm layer of ``module`` by a synchronised one (in place where possible).

    ``device_type == 'cuda'`` uses ``torch.nn.SyncBatchNorm``; other devices use :class:`SyncBatchNorm`.
    Parameters and running statistics are shared with the old layers (no copy).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (SyncBatchNorm, nn.SyncBatchNorm)):
        cls = nn.SyncBatchNorm if device_type == "cuda" else SyncBatchNorm
        new = cls(module.num_features, module.eps, module.momentum, affine=False,
                  track_running_stats=module.track_running_stats)
        return _copy_into(new, module)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, device_type)
        if converted is not child:
            setattr(module, name, converted)
    return module
