"""Device selection shared by every script (``--device auto|cpu|cuda[:N]``)."""
import os


def resolve_device(spec="auto"):
    """Return the ``torch.device`` for a ``--device`` value.

    Parameters
    ----------
    spec : str
        ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.

    Raises
    ------
    ValueError
        If CUDA is requested but not available, or the value is not understood.
    """
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec} was requested but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(spec)
    raise ValueError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N")


def device_description(device):
    """Human-readable name of a device: the GPU model for CUDA, the CPU count otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
