"""SCAN (seed 002, steps 2-3): clustering by neighbour consistency, then self-labelling, on frozen features.

1. **Neighbours.** Each training image's ``k`` nearest training images (cosine distance, exact FAISS search) in
   the features of a pretext model (any feature store: SimCLR, a fine-tuned checkpoint, ImageNet features).
2. **SCAN step.** Several clustering heads (``softmax(W x + b)`` on the L2-normalised features, optionally after
   one hidden layer) are trained with the SCAN loss: ``-mean log <p(anchor), p(neighbour)>`` (an image and a
   random one of its neighbours should get the same cluster) ``- entropy_weight * H(mean p)`` (spread the images
   over the clusters). The head with the lowest loss on the training set is kept.
3. **Self-labelling.** Images whose predicted cluster has probability above ``--confidence`` become pseudo-labels;
   the head is trained with a class-balanced cross-entropy on *strongly augmented* inputs. The features are
   frozen, so the strong augmentation acts on the features: random dropout of dimensions and Gaussian noise
   (scaled to the features' spread), not on pixels.

Only the training split is used for training; ACC (Hungarian matching), NMI and ARI are reported on the test
split, as mean and standard deviation over runs, next to k-means fitted on the same training features.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fast_search.index import make_index, prepare_vectors
from helpers.log import get_logger

from .metrics import adjusted_rand_index, hungarian_accuracy, normalized_mutual_info

logger = get_logger(__name__)
CHECKPOINT_FORMAT = "simsearch-scan-v1"


def mine_neighbors(features, k, device="cpu"):
    """``int64 [n, k]``: each row's ``k`` nearest other rows by cosine distance (exact)."""
    x = prepare_vectors(np.asarray(features, dtype=np.float32), "cosine")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"--num-neighbors must be between 1 and {n - 1} (the training images minus one), got {k}")
    index = make_index("Flat", "cosine", x.shape[1], device=device, backend="faiss")
    index.add(x)
    _, ids = index.search(x, k + 1)
    index.close()
    out = np.empty((n, k), dtype=np.int64)
    for row in range(n):  # drop the row itself wherever ties placed it
        others = ids[row][ids[row] != row]
        out[row] = others[:k]
    return out


def scan_loss(anchor_logits, neighbor_logits, entropy_weight=5.0):
    """The SCAN loss of one head.

    Parameters
    ----------
    anchor_logits, neighbor_logits : torch.Tensor ``[n, C]``
    entropy_weight : float

    Returns
    -------
    total, consistency, entropy : torch.Tensor
        ``consistency = -mean_i log(sum_c p_ic q_ic)`` (``p`` anchors', ``q`` neighbours' softmax),
        ``entropy = -sum_c pbar_c log pbar_c`` with ``pbar`` the mean anchor probability,
        ``total = consistency - entropy_weight * entropy``.
    """
    p = F.softmax(anchor_logits.float(), dim=1)
    q = F.softmax(neighbor_logits.float(), dim=1)
    similarity = (p * q).sum(dim=1)
    consistency = -torch.log(similarity.clamp_min(1e-8)).mean()
    mean = p.mean(dim=0)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum()
    return consistency - entropy_weight * entropy, consistency, entropy


class ClusteringHeads(nn.Module):
    """``num_heads`` cluster heads over L2-normalised features (``hidden`` > 0: one shared ReLU layer first)."""

    def __init__(self, in_dim, num_clusters, num_heads=1, hidden=0):
        super().__init__()
        self.in_dim, self.num_clusters, self.num_heads, self.hidden = int(in_dim), int(num_clusters), \
            int(num_heads), int(hidden)
        if self.num_clusters < 2 or self.num_heads < 1:
            raise ValueError("SCAN needs at least 2 clusters and 1 head")
        self.trunk = nn.Sequential(nn.Linear(self.in_dim, self.hidden), nn.ReLU()) if self.hidden else nn.Identity()
        width = self.hidden or self.in_dim
        self.heads = nn.ModuleList(nn.Linear(width, self.num_clusters) for _ in range(self.num_heads))

    def forward(self, x, normalized=False):
        x = self.trunk(x if normalized else F.normalize(x, dim=1))
        return [head(x) for head in self.heads]

    def keep_head(self, index):
        """This module with only head ``index`` (after the SCAN step picked it)."""
        kept = copy.deepcopy(self)
        kept.heads = nn.ModuleList([copy.deepcopy(self.heads[index])])
        kept.num_heads = 1
        return kept


def _batches(n, batch_size, generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train_scan(features, neighbors, num_clusters, *, num_heads=5, hidden=0, entropy_weight=5.0, epochs=100,
               batch_size=256, lr=1e-3, weight_decay=1e-4, seed=0, device="cpu", log=None):
    """The SCAN step: train the heads, return the one with the lowest loss on the training set.

    Returns
    -------
    model : ClusteringHeads (one head, CPU, eval mode)
    info : dict
        ``head`` (index kept), ``losses`` (final total loss of every head), ``history`` (per-epoch mean loss).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = F.normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)), dim=1).to(device)
    nb = torch.from_numpy(np.asarray(neighbors, dtype=np.int64)).to(device)
    model = ClusteringHeads(x.shape[1], num_clusters, num_heads, hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        totals = []
        for batch in _batches(len(x), batch_size, generator):
            batch = batch.to(device)
            pick = torch.randint(0, nb.shape[1], (len(batch),), generator=generator).to(device)
            anchors = model(x[batch], normalized=True)
            neighbours = model(x[nb[batch, pick]], normalized=True)
            losses = [scan_loss(a, b, entropy_weight)[0] for a, b in zip(anchors, neighbours)]
            loss = torch.stack(losses).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals.append(loss.item() / num_heads)
        history.append(float(np.mean(totals)))
        if log is not None:
            log("scan/loss", history[-1], epoch)
    # the lowest SCAN loss over the whole training set (every neighbour of every anchor)
    model.eval()
    with torch.no_grad():
        anchors = model(x, normalized=True)
        final = []
        for h in range(num_heads):
            values = [scan_loss(anchors[h], model(x[nb[:, j]], normalized=True)[h], entropy_weight)[0].item()
                      for j in range(nb.shape[1])]
            final.append(float(np.mean(values)))
    best = int(np.argmin(final))
    return model.keep_head(best).cpu().eval(), {"head": best, "losses": final, "history": history}


def strong_augment(x, generator, dropout=0.3, noise=0.5):
    """Feature-space strong augmentation: drop dimensions (rescaled) and add Gaussian noise of ``noise`` times the
    features' per-dimension standard deviation in the batch; then L2-normalised."""
    keep = (torch.rand(x.shape, generator=generator) >= dropout).to(x.device, x.dtype) / (1 - dropout)
    std = x.std(dim=0, keepdim=True) if x.shape[0] > 1 else torch.zeros_like(x[:1])
    jitter = torch.randn(x.shape, generator=generator).to(x.device, x.dtype) * std * noise
    return F.normalize(x * keep + jitter, dim=1)


def self_label_loss(weak_logits, strong_logits, confidence=0.99):
    """SCAN's confidence-based cross-entropy: pseudo-labels ``argmax`` of the weak view where its top
    probability exceeds ``confidence``, classes weighted by the inverse of their count among those; the loss is the
    weighted mean over the confident samples (0 when none)."""
    probs = F.softmax(weak_logits.detach().float(), dim=1)
    top, target = probs.max(dim=1)
    mask = top > confidence
    if not mask.any():
        return strong_logits.sum() * 0.0, 0
    target = target[mask]
    counts = torch.bincount(target, minlength=weak_logits.shape[1]).float()
    weight = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    weight = weight / weight[counts > 0].sum() * (counts > 0).sum()  # mean weight 1 over the present classes
    return F.cross_entropy(strong_logits[mask].float(), target, weight=weight), int(mask.sum())


def train_selflabel(model, features, *, epochs=50, batch_size=256, lr=1e-4, weight_decay=1e-4, confidence=0.99,
                    dropout=0.3, noise=0.5, seed=0, device="cpu", log=None):
    """The self-labelling step on a one-head model from :func:`train_scan`; returns the trained copy and info."""
    generator = torch.Generator().manual_seed(seed + 1)
    model = copy.deepcopy(model).to(device)
    x = F.normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)), dim=1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        totals, confident = [], 0
        for batch in _batches(len(x), batch_size, generator):
            batch = batch.to(device)
            with torch.no_grad():
                weak = model(x[batch], normalized=True)[0]
            strong = model(strong_augment(x[batch], generator, dropout, noise), normalized=True)[0]
            loss, count = self_label_loss(weak, strong, confidence)
            confident += count
            if count:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            totals.append(loss.item())
        history.append({"loss": float(np.mean(totals)), "confident": confident / len(x)})
        if log is not None:
            log("selflabel/loss", history[-1]["loss"], epoch)
            log("selflabel/confident_share", history[-1]["confident"], epoch)
    return model.cpu().eval(), {"history": history}


@torch.no_grad()
def predict(model, features, batch_size=65536):
    """Cluster id (``int64 [n]``) and its probability (``float32 [n]``) of every row."""
    model = model.eval()
    labels, probs = [], []
    for start in range(0, len(features), batch_size):
        x = torch.from_numpy(np.array(features[start:start + batch_size], dtype=np.float32))
        p = F.softmax(model(x)[0], dim=1)
        top, label = p.max(dim=1)
        labels.append(label.numpy())
        probs.append(top.numpy())
    return np.concatenate(labels).astype(np.int64), np.concatenate(probs).astype(np.float32)


def scores(labels_true, labels_pred):
    """ACC (Hungarian matching), NMI and ARI of a predicted assignment."""
    return {"acc": hungarian_accuracy(labels_true, labels_pred),
            "nmi": normalized_mutual_info(labels_true, labels_pred),
            "ari": adjusted_rand_index(labels_true, labels_pred)}


def kmeans_baseline(train, test, num_clusters, seed=0, n_init=10):
    """k-means fitted on the L2-normalised training features, applied to the test ones (cluster ids)."""
    from sklearn.cluster import KMeans

    unit = lambda a: F.normalize(torch.from_numpy(np.asarray(a, dtype=np.float32)), dim=1).numpy()  # noqa: E731
    model = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit(unit(train))
    return model.predict(unit(test)).astype(np.int64)


def features_record(meta, folder=None):
    """What a checkpoint records about the features it was trained on: the model identity
    (:func:`helpers.feature_store.model_identity`), the store's name, fingerprint, dataset and folder."""
    from helpers.feature_store import model_identity

    digest, fields = model_identity(meta)
    return {"identity": digest, "identity_fields": fields, "store_name": meta.get("name"),
            "store_fingerprint": meta.get("fingerprint"), "dataset": meta.get("dataset"),
            "store": None if folder is None else str(folder), "created": meta.get("created")}


def save_heads(path, model, features=None, **info):
    """Write a one-head model (``simsearch-scan-v1``; ``torch.load(weights_only=True)`` reads it).

    ``features`` is :func:`features_record` of the training store: :func:`check_features` refuses features of
    another model with it.
    """
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "in_dim": model.in_dim, "num_clusters": model.num_clusters,
               "hidden": model.hidden, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "features": features, "info": dict(info)}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_heads(path, with_features=False):
    """Read :func:`save_heads`'s file; returns ``(model, info)`` (``(model, info, features record)`` with
    ``with_features``). A missing or foreign file is a ``ValueError`` saying what to do."""
    from helpers.checkpoints import load_tagged_checkpoint

    payload = load_tagged_checkpoint(path, CHECKPOINT_FORMAT, "SCAN checkpoint",
                                     "scan.py writes <save-to>/run_<i>/scan.pt and selflabel.pt")
    model = ClusteringHeads(payload["in_dim"], payload["num_clusters"], 1, payload["hidden"])
    model.load_state_dict(payload["state_dict"])
    info = dict(payload.get("info") or {})
    if with_features:
        return model.eval(), info, payload.get("features")
    return model.eval(), info


def check_features(path, record, meta):
    """Refuse to apply the checkpoint ``path`` (trained on features described by ``record``, see
    :func:`features_record`) to a store of metadata ``meta`` made by another model: ``ValueError``, one line."""
    from helpers.feature_store import model_identity

    if not record or not record.get("identity"):
        raise ValueError(f"{path} does not record which features it was trained on (made by an older scan.py); "
                         "retrain it with scan.py")
    digest, fields = model_identity(meta)
    if digest == record["identity"]:
        return
    trained = record.get("identity_fields") or {}
    differ = sorted(key for key in set(trained) | set(fields) if trained.get(key) != fields.get(key))
    raise ValueError(f"SCAN checkpoint {path} was trained on '{record.get('store_name')}' features "
                     f"({trained.get('dim')}-d, model identity {record['identity'][:12]}), these are "
                     f"'{meta.get('name')}' ({meta.get('dim')}-d, {digest[:12]}; differs in: {', '.join(differ)}); "
                     "extract the features with the same model and post-processing")


def load_for_features(path, meta):
    """The model of the checkpoint ``path`` after :func:`check_features` against the store metadata ``meta``;
    returns ``(model, info, record)``."""
    model, info, record = load_heads(path, with_features=True)
    check_features(path, record, meta)
    return model, info, record


@torch.no_grad()
def predict_proba(model, features, batch_size=65536):
    """Cluster probabilities ``float32 [n, num_clusters]`` of every row (``features``: array or memmap)."""
    model = model.eval()
    out = np.empty((len(features), model.num_clusters), dtype=np.float32)
    for start in range(0, len(features), batch_size):
        x = torch.from_numpy(np.array(features[start:start + batch_size], dtype=np.float32))
        out[start:start + len(x)] = F.softmax(model(x)[0], dim=1).numpy()
    return out
