"""Learning-rate rules and schedules: SimCLR's square-root batch rule, linear warm-up then cosine decay."""
import math

from torch.optim.lr_scheduler import LambdaLR


def sqrt_batch_lr(global_batch_size, base=0.075):
    """SimCLR's square-root scaling: ``lr = 0.075 * sqrt(global batch size)`` (the ``--lr 0`` rule for LARS)."""
    if global_batch_size < 1:
        raise ValueError(f"global batch size must be >= 1, got {global_batch_size}")
    return base * math.sqrt(global_batch_size)


def warmup_cosine_factor(step, total_steps, warmup_steps):
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based).

    Linear warm-up from ``1/warmup_steps`` to 1 over the first ``warmup_steps`` steps, then cosine decay to 0 at
    ``total_steps`` (SimCLR's schedule).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = max(0, min(int(warmup_steps), total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(LambdaLR):
    """torch's ``LambdaLR`` driven by :func:`warmup_cosine_factor`: sets the learning rate of every group of an
    optimiser from the global step (``base_lr`` times the group's ``lr_scale``, 1 by default).

    torch's own warm-up + cosine chain (``SequentialLR`` of ``LinearLR`` and ``CosineAnnealingLR``) is not used:
    ``CosineAnnealingLR`` updates the rate recursively (rounding drifts from the closed form the tests check) and
    rises again after ``total_steps`` where SimCLR's schedule stays at 0. Resuming is exact: ``load_state_dict``
    takes the step counter (also from a checkpoint of the earlier ``{"step_count": ...}`` format). With
    ``enabled=False`` (``--scheduler False``) the learning rate stays constant.
    """

    def __init__(self, optimizer, base_lr, total_steps, warmup_steps, enabled=True):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.enabled = bool(enabled)
        for group in optimizer.param_groups:  # the rate this scheduler multiplies, whatever the optimiser had
            group["lr"] = group["initial_lr"] = self.base_lr * group.get("lr_scale", 1.0)
        super().__init__(optimizer, self.factor)

    def factor(self, step):
        """Multiplier of ``base_lr`` at optimisation step ``step``."""
        if not self.enabled:
            return 1.0
        return warmup_cosine_factor(step, self.total_steps, self.warmup_steps)

    @property
    def step_count(self):
        """Optimisation steps taken."""
        return self.last_epoch

    def current_lr(self):
        return self.base_lr * self.factor(self.last_epoch)

    def load_state_dict(self, state):
        """Resume at the saved step (the learning rates come from this run's configuration, as before)."""
        step = int(state["step_count"] if "step_count" in state else state["last_epoch"])  # older checkpoints
        self.last_epoch, self._step_count = step, step + 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor(step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
