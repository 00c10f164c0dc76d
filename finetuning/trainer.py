"""The fine-tuning loop: one process, several local processes (``--gpus N``) or torchrun (multi-GPU, multi-node).

Per epoch: train on two augmented views (or triplets) of every image, validate recall@1 on a retrieval set
disjoint from the training images, log to TensorBoard, write ``<log_dir>_models/<timestamp>/epoch_<n>.pth``
(an :mod:`extractor` checkpoint with everything needed to resume) and ``<log_dir>/best_epoch.json``.

Reproducibility: the model is initialised from ``--seed``; every augmented view is seeded by (seed, epoch, image,
view) and the order of the images by (seed, epoch), so a run gives the same batches whatever the number of
data-loader workers, and ``--resume`` continues exactly where the checkpoint left off.
"""
import contextlib
import datetime as _dt
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helpers.datasets import resolve_dataset
from helpers.device import resolve_device
from helpers.distributed import join_process_group, launched_by_torchrun
from helpers.experiment import is_finished, start_experiment
from helpers.image_io import SkipReport
from helpers.log import get_logger, setup_logging
from helpers.results import read_json, write_json
from helpers.seeding import seed_everything, stable_seed

from . import distributed as D
from .augment import CopyDetectionAugment, eval_transform, simclr_transform
from .data import ImageBank, TripletDataset, TwoViewDataset
from .lars import LARS, lars_param_groups
from .losses import full_precision, koleo_loss, nt_xent_loss, triplet_loss
from .models import TrainingModel, build_networks, read_checkpoint, save_training_checkpoint, start_kind
from .regularizers import StartSnapshot, feature_distillation_loss, l2sp_penalty
from .schedules import WarmupCosine, sqrt_batch_lr
from .syncbn import convert_sync_batchnorm
from .validation import build_validation_set, evaluate_retrieval

logger = get_logger(__name__)

BEST_FILE = "best_epoch.json"
LAZY_THRESHOLD = 20000
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")


# ------------------------------------------------------------------------------------------------ run layout

def models_root(log_dir):
    """``<log_dir>_models``: where the runs' checkpoints go (the seed's layout)."""
    log_dir = Path(log_dir)
    return log_dir.parent / f"{log_dir.name}_models"


def epoch_checkpoints(run_dir):
    """``{epoch: path}`` of the ``epoch_<n>.pth`` files of a run folder."""
    out = {}
    if Path(run_dir).is_dir():
        for path in Path(run_dir).iterdir():
            match = _EPOCH_FILE.match(path.name)
            if match:
                out[int(match.group(1))] = path
    return dict(sorted(out.items()))


def latest_checkpoint(log_dir):
    """``(run_dir, epoch, path)`` of the last checkpoint of the latest run of ``log_dir``, or ``None``."""
    root = models_root(log_dir)
    if not root.is_dir():
        return None
    for run_dir in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        checkpoints = epoch_checkpoints(run_dir)
        if checkpoints:
            epoch = max(checkpoints)
            return run_dir, epoch, checkpoints[epoch]
    return None


# ------------------------------------------------------------------------------------------- state helpers

def optimizer_state(optimizer):
    """``optimizer.state_dict()`` with string keys (the checkpoint format allows str-keyed dicts only)."""
    state = optimizer.state_dict()
    return {"state": {str(key): value for key, value in state["state"].items()},
            "param_groups": [dict(group) for group in state["param_groups"]]}


def load_optimizer_state(optimizer, saved):
    optimizer.load_state_dict({"state": {int(key): value for key, value in saved["state"].items()},
                               "param_groups": saved["param_groups"]})


def rng_state():
    """Every random generator's state, as plain tensors and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "state": [int(v) for v in py_state], "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state((saved["name"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                         saved["cached_gaussian"]))
    saved = state["python"]
    random.setstate((saved["version"], tuple(saved["state"]), saved["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- loss step

@dataclass(frozen=True)
class LossSpec:
    """What :func:`compute_loss` computes."""

    mode: str = "simclr"
    temperature: float = 0.1
    koleo_weight: float = 0.0
    margin: float = 0.2
    l2sp_weight: float = 0.0
    distill_weight: float = 0.0


@dataclass
class StartRegularizer:
    """The regularisers toward the starting model (:mod:`finetuning.regularizers`) of a run.

    ``net`` is the trained descriptor network (unwrapped), ``snapshot`` its starting parameters, ``teacher`` a
    frozen :class:`TrainingModel` of the starting network (feature distillation only).
    """

    net: torch.nn.Module
    snapshot: StartSnapshot
    teacher: torch.nn.Module = None

    @classmethod
    def for_model(cls, training_model, spec):
        """``None`` when neither ``spec.l2sp_weight`` nor ``spec.distill_weight`` is set."""
        if not spec.l2sp_weight and not spec.distill_weight:
            return None
        snapshot = StartSnapshot(training_model.net, keep_network=bool(spec.distill_weight))
        teacher = TrainingModel(snapshot.network).eval() if spec.distill_weight else None
        return cls(training_model.net, snapshot, teacher)

    def to(self, device):
        self.snapshot.to(device)
        if self.teacher is not None:
            self.teacher = self.teacher.to(device)
        return self


def compute_loss(model, batch, spec, regularizer=None):
    """Loss of one batch; all views go through the model in one forward pass (one DDP reduction, one set of
    batch statistics over the global batch).

    ``regularizer`` (a :class:`StartRegularizer`) adds ``spec.l2sp_weight`` x L2-SP and ``spec.distill_weight`` x
    feature distillation of the descriptors of every view toward the frozen start.

    Returns
    -------
    (torch.Tensor, dict)
        The scalar loss and its unweighted parts as floats (``nt_xent``, ``koleo``, ``triplet``, ``l2sp``: the
        squared distance to the start, ``distill``).
    """
    distill = regularizer is not None and regularizer.teacher is not None and spec.distill_weight
    views = batch[:3] if spec.mode == "triplet" else batch[:2]
    inputs = torch.cat(list(views))
    if distill:
        out, descriptor = model(inputs, with_descriptor=True)
    else:
        out = model(inputs)
    if spec.mode == "triplet":
        a, p, n = full_precision(out).chunk(3)
        loss = triplet_loss(a, p, n, margin=spec.margin)
        parts = {"triplet": float(loss.detach())}
    else:
        z1, z2 = full_precision(out).chunk(2)
        loss = nt_xent_loss(z1, z2, temperature=spec.temperature)
        parts = {"nt_xent": float(loss.detach())}
        if spec.koleo_weight:
            koleo = koleo_loss(z1, z2)
            loss = loss + spec.koleo_weight * koleo
            parts["koleo"] = float(koleo.detach())
    if distill:
        with torch.no_grad():
            target = regularizer.teacher.descriptor(inputs)
        term = feature_distillation_loss(descriptor, target)
        loss = loss + spec.distill_weight * term
        parts["distill"] = float(term.detach())
    if regularizer is not None and spec.l2sp_weight:
        distance2 = l2sp_penalty(regularizer.net, regularizer.snapshot, 2.0)      # sum ||w - w0||^2
        loss = loss + 0.5 * spec.l2sp_weight * distance2
        parts["l2sp"] = float(distance2.detach())
    return loss, parts


def prepare_model(model, info, device):
    """Move to ``device``; under DDP convert batch norm to synchronised batch norm and wrap in DDP."""
    model = model.to(device)
    if not info.distributed:
        return model
    model = convert_sync_batchnorm(model, device.type)
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class EpochSampler(torch.utils.data.Sampler):
    """Single-process shuffling seeded by (seed, epoch): resumable and independent of everything else."""

    def __init__(self, n, seed=0):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.n

    def __iter__(self):
        rng = np.random.default_rng(stable_seed("order", self.seed, self.epoch))
        return iter(rng.permutation(self.n).tolist())


def make_sampler(dataset, info, seed):
    if info.distributed:
        return torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=info.world_size,
                                                               rank=info.rank, shuffle=True, seed=seed,
                                                               drop_last=True)
    return EpochSampler(len(dataset), seed)


# -------------------------------------------------------------------------------------------- building

def automatic_lr(config, global_batch):
    """``--lr 0``: LARS 0.075 sqrt(B) (SimCLR), Adam 1e-3 sqrt(B/256); x pretrained_lr_scale for warm starts."""
    if config.lr > 0:
        return float(config.lr)
    lr = sqrt_batch_lr(global_batch) if config.optimizer == "lars" else 1e-3 * math.sqrt(global_batch / 256)
    if start_kind(config) != "random":
        lr *= config.pretrained_lr_scale
    return lr


def make_optimizer(config, model, lr):
    groups = lars_param_groups(model, config.weight_decay)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    if config.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay,
                    nesterov=config.nesterov)
    return torch.optim.Adam(groups, lr=lr, weight_decay=config.weight_decay)


def make_transform(config):
    if config.mode == "copy_detection":
        return CopyDetectionAugment(config.size, jitter=config.jitter, p_edit=config.edit_prob,
                                    scale=(config.crop_scale, 1.0), families=config.edit_families,
                                    crop_prob=config.crop_prob)
    return simclr_transform(config.size, config.jitter)


def load_training_bank(config, report):
    datasets = config.train_dataset if isinstance(config.train_dataset, (list, tuple)) else [config.train_dataset]
    resolved = [resolve_dataset(dataset) for dataset in datasets]
    listed = [ds.image_paths(report=report) for ds in resolved]
    paths = [path for part in listed for path in part]
    identities = None
    if config.mode == "triplet":  # class labels: the only mode that reads them
        from helpers.ground_truth import dataset_labels

        identities = [label for ds, part in zip(resolved, listed) for label in dataset_labels(ds, part)]
    lazy = config.in_memory == "false" or (config.in_memory == "auto" and len(paths) > LAZY_THRESHOLD)
    bank = ImageBank(paths, short_side=config.bank_side, report=report, lazy=lazy, identities=identities,
                     max_pixels=config.max_pixels)
    if len(bank) == 0:
        raise ValueError(f"no readable training images in {config.train_dataset}")
    return bank


def autocast_context(config, device):
    if config.precision == "fp32":
        return contextlib.nullcontext()
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def summary_writer(folder, purge_step=None):
    """A TensorBoard ``SummaryWriter``. TensorBoard imports TensorFlow when it is installed (a dev requirement
    here) just to write event files, which costs seconds and threads per process; its own TF stub does the
    same job, so the stub is selected (``tensorboard.compat.notf``, TensorBoard's documented switch)."""
    import sys
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder), purge_step=purge_step)


# ---------------------------------------------------------------------------------------------- entry

def run_finetuning(config):
    """Run fine-tuning as configured: spawns ``--gpus`` local processes unless torchrun started this one.

    Returns the summary dict of rank 0 (``best_epoch``, ``best_value``, ``run_dir``, ``history``...) or ``None``
    on the other ranks and after a local spawn (read ``best_epoch.json`` then).
    """
    if config.gpus > 1 and not launched_by_torchrun():
        port = D.free_port()
        torch.multiprocessing.spawn(_spawned_worker, args=(config, port), nprocs=config.gpus, join=True)
        best = Path(config.log_dir) / BEST_FILE
        return read_json(best) if best.is_file() else None
    return _worker(config)


def _spawned_worker(local_rank, config, port):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(local_rank),
                       "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(config.gpus),
                       "LOCAL_WORLD_SIZE": str(config.gpus)})
    setup_logging(config.log_level)
    _worker(config)


def _worker(config):
    info, device = join_process_group(resolve_device(config.device))
    try:
        if device.type == "cpu" and info.distributed:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        return Trainer(config, info, device).run()
    finally:
        info.close()


class Trainer:
    """One process's share of a fine-tuning run (see :func:`run_finetuning`)."""

    def __init__(self, config, info, device):
        self.config, self.info, self.device = config, info, device
        self.log_dir = Path(config.log_dir)
        self.spec = LossSpec(config.mode, config.loss_temperature, config.koleo, config.margin,
                             l2sp_weight=config.l2sp_weight, distill_weight=config.distill_weight)

    # ---------------------------------------------------------------------------------------------- setup
    def _start(self):
        """Experiment record, run folder and (with --resume) the checkpoint to continue from."""
        config, main = self.config, self.info.is_main
        resume_from, error = None, ""
        if not config.resume and main and not is_finished(self.log_dir) and latest_checkpoint(self.log_dir):
            logger.warning("%s holds an interrupted run; this starts a new one (add --resume to continue it)",
                           self.log_dir)
        if config.resume:
            found = latest_checkpoint(self.log_dir)
            if found is None:
                error = f"--resume: no checkpoint under {models_root(self.log_dir)}; start without --resume"
            else:
                resume_from = found
        if not error and main:
            if resume_from is None or not is_finished(self.log_dir):
                try:
                    self.experiment = start_experiment(self.log_dir, config.to_dict(), force=config.force and
                                                       not config.resume, device=self.device)
                except FileExistsError as exc:
                    error = str(exc)
            else:
                self.experiment = None
        # Every process must agree on errors and on the run folder before anything else happens.
        error = D.broadcast_string(error or "-", device=self._comm_device())
        if error != "-":
            raise ValueError(error)
        if resume_from is not None:
            self.run_dir, last_epoch, path = resume_from
            self.resume_path = path
        else:
            stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            stamp = D.broadcast_string(stamp, device=self._comm_device())
            self.run_dir = models_root(self.log_dir) / stamp
            self.resume_path = None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _comm_device(self):
        return self.device if D.is_initialized() and self.device.type == "cuda" else "cpu"

    def _build(self):
        config = self.config
        seed_everything(config.seed)
        net, head, self.start_info = build_networks(config)
        self.net = net
        self.training_model = TrainingModel(net, head, freeze_backbone=config.freeze_backbone,
                                            freeze_bn=config.freeze_bn)
        self.model = prepare_model(self.training_model, self.info, self.device)
        # the anchor of L2-SP / distillation: the start, before any step (a resumed run rebuilds it identically)
        self.regularizer = StartRegularizer.for_model(self.training_model, self.spec)
        if self.regularizer is not None:
            self.regularizer.to(self.device)
        report = SkipReport()
        self.bank = load_training_bank(config, report)
        transform = make_transform(config)
        dataset_cls = TripletDataset if config.mode == "triplet" else TwoViewDataset
        self.dataset = dataset_cls(self.bank, transform, seed=config.seed)
        self.sampler = make_sampler(self.dataset, self.info, config.seed)
        global_batch = config.batch_size * self.info.world_size
        if len(self.dataset) < global_batch:
            raise ValueError(f"{len(self.dataset)} training images for a global batch of {global_batch} "
                             f"({config.batch_size} x {self.info.world_size} processes); lower --batch_size")
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=config.batch_size, sampler=self.sampler, num_workers=config.workers,
            drop_last=True, pin_memory=self.device.type == "cuda", persistent_workers=False)
        self.steps_per_epoch = len(self.loader)
        self.lr = automatic_lr(config, global_batch)
        self.optimizer = make_optimizer(config, self.training_model, self.lr)
        warmup_epochs = config.warmup_epochs if config.warmup_epochs is not None else 0.1 * config.epochs
        total = config.epochs * self.steps_per_epoch
        self.scheduler = WarmupCosine(self.optimizer, self.lr, total, round(warmup_epochs * self.steps_per_epoch),
                                      enabled=config.scheduler)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.val_set = None
        if config.val_dataset and self.info.is_main:
            self.val_set = build_validation_set(config.val_dataset, train_paths=self.bank.paths,
                                                copies=config.val_copies, seed=config.seed,
                                                short_side=config.bank_side, families=config.edit_families,
                                                report=report, max_pixels=config.max_pixels)
            if config.val_distractors and not isinstance(self.bank.images, list):
                logger.info("validation: no distractors (training images are decoded lazily)")
            elif config.val_distractors:
                self.val_set.distractor_images = list(self.bank.images)
                self.val_set.distractor_names = list(self.bank.paths)
        if self.info.is_main:  # training and validation files skipped, with their reasons
            report.write(self.log_dir)
        self.history, self.best, self.start_epoch, self.global_step = [], None, 1, 0

    def _restore(self):
        if self.resume_path is None:
            return
        path = self.resume_path
        payload = read_checkpoint(path)  # weights_only: a malicious file is refused, never run
        try:
            self.net.load_state_dict(payload["state_dict"])
            if self.training_model.head is not None and payload.get("head_state_dict") is not None:
                self.training_model.head.load_state_dict(payload["head_state_dict"])
            load_optimizer_state(self.optimizer, payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            if self.scaler is not None and payload.get("grad_scaler"):
                self.scaler.load_state_dict(payload["grad_scaler"])
            set_rng_state(payload["rng"])
            self.start_epoch = int(payload["epoch"]) + 1
            self.global_step = int(payload["global_step"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ValueError(f"cannot resume from {path}: it is not a complete checkpoint of this run "
                             f"({type(exc).__name__}: {detail}); delete it to resume from the epoch before, or "
                             f"start again without --resume") from None
        self.history = list(payload.get("history") or [])
        self.best = payload.get("best")
        saved = payload.get("training_config") or {}
        changed = {key: (saved.get(key), value) for key, value in self.config.to_dict().items()
                   if key in ("mode", "backbone", "batch_size", "size", "optimizer", "lr", "temperature",
                              "epochs", "seed") and key in saved and saved.get(key) != value}
        if changed:
            logger.warning("resuming with different settings than the checkpoint: %s", changed)
        logger.info("resumed from %s (epoch %d, step %d)", self.resume_path, self.start_epoch - 1,
                    self.global_step)

    # --------------------------------------------------------------------------------------------- loop
    def run(self):
        self._start()
        self._build()
        self._restore()
        config, main = self.config, self.info.is_main
        writer = None
        if main:
            writer = summary_writer(self.log_dir / self.run_dir.name,
                                    purge_step=self.global_step if self.resume_path else None)
            logger.info("fine-tuning %s (%s start, %s) in %s mode on %d images: %d epochs x %d steps, global "
                        "batch %d, lr %.4g, %s, device %s, %d process(es); checkpoints in %s",
                        self.start_info["backbone"], self.start_info["start"], self.start_info["weights"],
                        config.mode, len(self.bank), config.epochs, self.steps_per_epoch,
                        config.batch_size * self.info.world_size, self.lr, config.optimizer, self.device,
                        self.info.world_size, self.run_dir)
        if self.start_epoch == 1 and self.val_set is not None and main and not self.history:
            record = {"epoch": 0, **self._validate()}
            self.history.append(record)
            self.best = {"epoch": 0, "value": self._selection_value(record), "checkpoint": None}
            self._log_scalars(writer, record, 0)
            logger.info("epoch 0 (starting model): validation recall@1 %.4f, muAP %.4f", record["recall@1"],
                        record.get("val_muap", float("nan")))
        loop_started, self.stopped_early = time.time(), None
        for epoch in range(self.start_epoch, config.epochs + 1):
            if config.max_minutes is not None and epoch > self.start_epoch:
                done = epoch - self.start_epoch
                per_epoch = (time.time() - loop_started) / done
                # Every process decides from rank 0's clock, so they all stop at the same epoch.
                late = D.broadcast_string(str(int(time.time() - loop_started + per_epoch > config.max_minutes * 60)),
                                          device=self._comm_device())
                if late == "1":
                    self.stopped_early = {"after_epoch": epoch - 1, "planned_epochs": config.epochs,
                                          "max_minutes": config.max_minutes}
                    logger.warning("stopping after epoch %d of %d: another epoch would pass --max_minutes %g",
                                   epoch - 1, config.epochs, config.max_minutes)
                    break
            record = self._train_epoch(epoch, writer)
            validate = self.val_set is not None and (epoch % config.val_every == 0 or epoch == config.epochs)
            if main and validate:
                record.update(self._validate())
            if main:
                self.history.append(record)
                path = self.run_dir / f"epoch_{epoch}.pth"
                value = self._selection_value(record)
                if value is not None and (self.best is None or value > self.best["value"]):
                    self.best = {"epoch": epoch, "value": value, "checkpoint": str(path)}
                elif self.val_set is None:
                    self.best = {"epoch": epoch, "value": None, "checkpoint": str(path)}
                self._save(path, epoch)
                if config.keep_checkpoints == "best_last":
                    self._prune(keep={epoch, self.best["epoch"] if self.best else epoch})
                self._log_scalars(writer, record, self.global_step)
                self._write_best()
                logger.info("epoch %d/%d: %s", epoch, config.epochs,
                            ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                      if k != "epoch" and isinstance(v, float)))
            D.barrier()
        summary = None
        if main:
            writer.close()
            summary = self._write_best()
            if self.stopped_early:
                logger.info("the experiment stays unfinished: continue it with --resume and a larger --max_minutes")
            elif getattr(self, "experiment", None) is not None:
                self.experiment.finish(best_epoch=self.best["epoch"] if self.best else None,
                                       best_value=self.best["value"] if self.best else None,
                                       best_metric=self.config.select_metric,
                                       run_dir=str(self.run_dir))
            else:
                logger.info("the experiment record of %s was already finished; left as is", self.log_dir)
        return summary

    def _train_epoch(self, epoch, writer):
        config = self.config
        self.model.train()
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        started, totals, count = time.time(), {}, 0
        for batch in self.loader:
            batch = [item.to(self.device, non_blocking=True) for item in batch[:-1]]
            with autocast_context(config, self.device):
                loss, parts = compute_loss(self.model, batch, self.spec, self.regularizer)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {float(loss)} at epoch {epoch}, step "
                                         f"{self.global_step}; lower --lr or use --precision fp32")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            self.global_step += 1
            count += 1
            parts["loss"] = float(loss.detach())
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            if writer is not None and self.global_step % config.log_every == 0:
                for key, value in parts.items():
                    writer.add_scalar(f"train_step/{key}", value, self.global_step)
                writer.add_scalar("train_step/lr", lr, self.global_step)
        record = {"epoch": epoch}
        for key, value in totals.items():
            record[f"train_{key}"] = D.all_reduce_mean(value / max(1, count), self._comm_device())
        record["lr"] = float(self.scheduler.current_lr())
        record["epoch_seconds"] = float(time.time() - started)
        return record

    def _validate(self):
        started = time.time()
        model = self.training_model
        was_training = model.training
        model.eval()
        try:
            metrics = evaluate_retrieval(model.descriptor, self.val_set, eval_transform(self.config.size),
                                         batch_size=max(1, self.config.batch_size), device=self.device)
        finally:
            model.train(was_training)
        out = {f"val_{key}": float(metrics[key]) for key in ("recall@1", "recall@5", "recall@10", "muap")
               if key in metrics}
        out["recall@1"] = out.pop("val_recall@1")
        out["val_seconds"] = float(time.time() - started)
        return out

    def _selection_value(self, record):
        """The validation metric that selects the best epoch (``--select_metric``), ``None`` when not validated."""
        key = "recall@1" if self.config.select_metric == "recall@1" else f"val_{self.config.select_metric}"
        return record.get(key) if "recall@1" in record else None

    def _log_scalars(self, writer, record, step):
        if writer is None:
            return
        names = {"train_loss": "loss/train", "train_nt_xent": "loss/nt_xent", "train_koleo": "loss/koleo",
                 "train_l2sp": "loss/l2sp_distance2", "train_distill": "loss/distill",
                 "train_triplet": "loss/triplet", "lr": "lr", "recall@1": "val/recall@1",
                 "val_recall@5": "val/recall@5", "val_recall@10": "val/recall@10", "val_muap": "val/muap",
                 "epoch_seconds": "time/epoch_seconds"}
        for key, tag in names.items():
            if key in record and record[key] is not None:
                writer.add_scalar(tag, record[key], step)
        writer.flush()

    def _save(self, path, epoch):
        model = self.training_model
        extra = {
            "mode": self.config.mode,
            "epoch": int(epoch),
            "global_step": int(self.global_step),
            "head_state_dict": (None if model.head is None else
                                {k: v.detach().cpu() for k, v in model.head.state_dict().items()}),
            "optimizer": optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "best": self.best,
            "training_config": self.config.to_dict(),
            "start": self.start_info,
        }
        if self.scaler is not None:
            extra["grad_scaler"] = self.scaler.state_dict()
        save_training_checkpoint(path, self.net, **extra)

    def _prune(self, keep):
        for epoch, path in epoch_checkpoints(self.run_dir).items():
            if epoch not in keep:
                path.unlink(missing_ok=True)

    def _write_best(self):
        summary = {"metric": f"validation {self.config.select_metric}" if self.val_set is not None else None,
                   "best_epoch": self.best["epoch"] if self.best else None,
                   "best_value": self.best["value"] if self.best else None,
                   "best_checkpoint": self.best["checkpoint"] if self.best else None,
                   "run_dir": str(self.run_dir), "start": self.start_info, "history": self.history}
        if self.best and self.best["epoch"] == 0:
            summary["note"] = "no epoch beat the starting model on the validation set"
        if getattr(self, "stopped_early", None):
            summary["stopped_early"] = self.stopped_early
        summary["last_epoch"] = self.history[-1]["epoch"] if self.history else None
        write_json(self.log_dir / BEST_FILE, summary)
        return summary
