"""Learning-rate rules and schedules: SimCLR's square-root batch rule, linear warm-up then cosine decay."""
import math


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


class WarmupCosine:
    """Sets the learning rate of every group of an optimiser from the global step.

    Its whole state is the step counter, so resuming is exact: ``state_dict()`` / ``load_state_dict()``.
    With ``enabled=False`` (``--scheduler False``) the learning rate stays constant.
    """

    def __init__(self, optimizer, base_lr, total_steps, warmup_steps, enabled=True):
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.enabled = bool(enabled)
        self.step_count = 0
        self._apply()

    def current_lr(self):
        if not self.enabled:
            return self.base_lr
        return self.base_lr * warmup_cosine_factor(self.step_count, self.total_steps, self.warmup_steps)

    def _apply(self):
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self):
        """Advance one optimisation step (call after ``optimizer.step()``)."""
        self.step_count += 1
        self._apply()

    def state_dict(self):
        return {"step_count": self.step_count, "base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "enabled": self.enabled}

    def load_state_dict(self, state):
        self.step_count = int(state["step_count"])
        self._apply()
