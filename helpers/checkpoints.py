"""Reading the toolkit's own small torch checkpoints (adaptation modules, SCAN heads): one place for the checks.

Each kind of checkpoint is a dict with a ``format`` tag, saved with ``torch.save`` and read back with
``torch.load(..., weights_only=True)`` (no pickle of arbitrary objects).
"""
from pathlib import Path


def load_tagged_checkpoint(path, checkpoint_format, kind, written_by):
    """The payload dict of a checkpoint whose ``format`` is ``checkpoint_format``.

    Parameters
    ----------
    path : path
    checkpoint_format : str
        The expected ``format`` tag.
    kind : str
        What the checkpoint is, for messages (``'SCAN checkpoint'``).
    written_by : str
        Which script writes it and where, for messages (``'scan.py writes <save-to>/run_<i>/scan.pt'``).

    Raises
    ------
    ValueError
        When the file is missing, unreadable by torch, or not a checkpoint of this kind; the message says what to do.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{kind} not found: {path} ({written_by})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a readable torch checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != checkpoint_format:
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ValueError(f"{path} is not {article} {kind} ({checkpoint_format}); {written_by}")
    return payload
