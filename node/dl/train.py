"""Training the multimodal network (torch): lesion-level sampling, patient-grouped splits, early stopping on an
inner grouped validation split, a weighted multi-task loss, augmentation on the training side only.

* **Splits**: every split (outer folds of :func:`cross_validate`, the inner early-stopping split of :func:`fit`)
  is drawn over patients, so all lesions of a patient fall on one side; :func:`check_disjoint` asserts it.
* **Loss**: per task a binary cross-entropy with ``pos_weight = negatives / positives`` of the training side
  (class weights against imbalance), a missing label masked out, the tasks summed with ``task_weights``;
  single-task training is the same loss with one task weight left.
* **Augmentation** (training batches only): random flips of each axis, a rotation of up to ``max_rotation_deg``
  about a random axis, intensity jitter (scale 1 ± 0.1, shift ± 0.1) of the image channels (not the mask).
* **Reproducibility**: ``seed`` fixes torch, numpy and the splits; the device is chosen at run time (CUDA when
  present, else CPU; results on a GPU may differ in the last digits).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from node.dl.data import DlDataset
from node.dl.net import FusionNet, NetSpec
from node.errors import ConfigError

logger = logging.getLogger(__name__)

IntpArray = npt.NDArray[np.intp]
F64 = npt.NDArray[np.float64]
#: the ablations of the evaluation table: name -> (image, radiomics, location, multi-task)
VARIANTS: dict[str, tuple[bool, bool, bool, bool]] = {
    "fusion": (True, True, True, True),
    "image only": (True, False, False, True),
    "radiomics only": (False, True, False, True),
    "location only": (False, False, True, True),
    "fusion, single-task": (True, True, True, False),
}


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` when given, else CUDA when available, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    max_epochs: int = 40
    patience: int = 8
    batch_size: int = 8
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    val_fraction: float = 0.2
    augment: bool = True
    max_rotation_deg: float = 10.0
    device: str | None = None
    #: CPU threads for torch; 1 is fastest on a small shared machine (idle OpenMP threads spin and contend)
    threads: int = 1


@dataclass(frozen=True)
class Standardiser:
    """Z-scoring of the radiomic vector with the training side's mean and SD (missing -> the mean)."""

    mean: F64
    sd: F64

    @classmethod
    def fit(cls, x: F64) -> Standardiser:
        mean = np.nanmean(x, axis=0)
        sd = np.nanstd(x, axis=0)
        return cls(mean, np.where(sd > 0, sd, 1.0))

    def apply(self, x: F64) -> npt.NDArray[np.float32]:
        z = (x - self.mean) / self.sd
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


@dataclass
class Fitted:
    """A trained network with its standardisation and training history."""

    net: FusionNet
    standardiser: Standardiser
    config: TrainConfig
    epochs: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def check_disjoint(groups: npt.NDArray[np.str_], a: IntpArray, b: IntpArray) -> None:
    """Raise when a patient has lesions on both sides of a split (leakage)."""
    shared = set(groups[a].tolist()) & set(groups[b].tolist())
    if shared:
        raise ConfigError(f"{len(shared)} patient(s) on both sides of a split")


def grouped_holdout(groups: npt.NDArray[np.str_], fraction: float, seed: int) -> tuple[IntpArray, IntpArray]:
    """A patient-grouped train / validation split."""
    split = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    tr, va = next(split.split(np.zeros(groups.size), groups=groups))
    check_disjoint(groups, tr, va)
    return np.asarray(tr), np.asarray(va)


def grouped_folds(data: DlDataset, n_folds: int, seed: int) -> list[tuple[IntpArray, IntpArray]]:
    """Patient-grouped outer folds, stratified on the HER2 label (the rarest positive class of the three)."""
    strat = np.where(data.y[:, 2] >= 0, data.y[:, 2], 2)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(np.zeros(strat.size), strat, data.groups)]
    for tr, te in folds:
        check_disjoint(data.groups, tr, te)
    return folds


def augment(images: torch.Tensor, gen: torch.Generator, max_rotation_deg: float) -> torch.Tensor:
    """Flips, a small rotation and intensity jitter of a ``(B, C, S, S, S)`` batch (the last channel is the mask)."""
    b = images.shape[0]
    dev = images.device
    for axis in (2, 3, 4):
        flip = torch.rand(b, generator=gen) < 0.5
        if flip.any():
            idx = flip.nonzero().flatten().to(dev)
            images[idx] = images[idx].flip(axis)
    if max_rotation_deg > 0:
        angles = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_rotation_deg)
        axes = torch.randint(0, 3, (b,), generator=gen)
        theta = torch.zeros(b, 3, 4)
        for i in range(b):
            c, s = math.cos(float(angles[i])), math.sin(float(angles[i]))
            plane = [j for j in range(3) if j != int(axes[i])]
            rot = torch.eye(3)
            rot[plane[0], plane[0]], rot[plane[0], plane[1]] = c, -s
            rot[plane[1], plane[0]], rot[plane[1], plane[1]] = s, c
            theta[i, :, :3] = rot
        grid = F.affine_grid(theta.to(dev), list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    scale = (1.0 + (torch.rand(b, 1, 1, 1, 1, generator=gen) * 2 - 1) * 0.1).to(dev)
    shift = ((torch.rand(b, 1, 1, 1, 1, generator=gen) * 2 - 1) * 0.1).to(dev)
    images[:, :-1] = images[:, :-1] * scale + shift
    return images


def _pos_weights(y: npt.NDArray[np.int64]) -> torch.Tensor:
    pos = np.sum(y == 1, axis=0).astype(np.float64)
    neg = np.sum(y == 0, axis=0).astype(np.float64)
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1.0), 1.0), dtype=torch.float32)


def multitask_loss(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor,
                   task_weights: torch.Tensor) -> torch.Tensor:
    """Σ_t w_t · mean BCE_t (class-weighted, missing labels masked) over the tasks present in the batch."""
    known = y >= 0
    target = torch.where(known, y, torch.zeros_like(y)).float()
    per = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    per = per * known
    counts = known.sum(dim=0).clamp(min=1)
    return ((per.sum(dim=0) / counts) * task_weights).sum()


def _tensors(data: DlDataset, std: Standardiser, device: torch.device) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(data.images).to(device), torch.from_numpy(std.apply(data.radiomics)).to(device),
            torch.from_numpy(data.location).to(device), torch.from_numpy(data.y).to(device))


def _eval_loss(net: FusionNet, tensors: tuple[torch.Tensor, ...], pos_weight: torch.Tensor,
               task_weights: torch.Tensor, batch: int) -> float:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(*(t[i:i + batch] for t in tensors[:3])) for i in range(0, tensors[0].shape[0], batch)])
        return float(multitask_loss(logits, tensors[3], pos_weight, task_weights))


def fit(data: DlDataset, spec: NetSpec, config: TrainConfig | None = None) -> Fitted:
    """Train on ``data`` with early stopping on a patient-grouped inner validation split; the best epoch is kept."""
    config = config or TrainConfig()
    seed_everything(config.seed)
    device = pick_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads)
    tr, va = grouped_holdout(data.groups, config.val_fraction, config.seed)
    train, val = data.subset(tr), data.subset(va)
    std = Standardiser.fit(train.radiomics)
    net = FusionNet(spec).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    pos_weight = _pos_weights(train.y).to(device)
    task_weights = torch.tensor(config.task_weights, dtype=torch.float32, device=device)
    t_train, t_val = _tensors(train, std, device), _tensors(val, std, device)
    gen = torch.Generator().manual_seed(config.seed)
    best, best_state, stale, history = math.inf, copy.deepcopy(net.state_dict()), 0, []
    epochs = 0
    for epoch in range(config.max_epochs):
        net.train()
        order = torch.randperm(len(tr), generator=gen)
        total = 0.0
        start = time.perf_counter()
        for i in range(0, len(tr), config.batch_size):
            idx = order[i:i + config.batch_size]
            idx_d = idx.to(device)
            images = t_train[0][idx_d].clone()
            if config.augment and spec.use_image:
                images = augment(images, gen, config.max_rotation_deg)
            logits = net(images, t_train[1][idx_d], t_train[2][idx_d])
            loss = multitask_loss(logits, t_train[3][idx_d], pos_weight, task_weights)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * idx.numel()
        val_loss = _eval_loss(net, t_val, pos_weight, task_weights, 64)
        epochs = epoch + 1
        history.append({"epoch": epochs, "train_loss": total / max(len(tr), 1), "val_loss": val_loss,
                        "seconds": time.perf_counter() - start})
        logger.debug("epoch %d: train %.4f val %.4f", epochs, history[-1]["train_loss"], val_loss)
        if val_loss < best - 1e-4:
            best, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    return Fitted(net.cpu(), std, config, epochs, best, history)


def predict(fitted: Fitted, data: DlDataset, batch: int = 64) -> F64:
    """Probabilities ``(n, 3)`` of the positive class per task."""
    net = fitted.net.eval()
    tensors = _tensors(data, fitted.standardiser, torch.device("cpu"))
    with torch.no_grad():
        logits = torch.cat([net(*(t[i:i + batch] for t in tensors[:3])) for i in range(0, data.y.shape[0], batch)])
    return np.asarray(torch.sigmoid(logits).numpy(), dtype=np.float64)


def spec_for(data: DlDataset, variant: str) -> NetSpec:
    image, radiomics, location, _ = VARIANTS[variant]
    return NetSpec(n_channels=int(data.images.shape[1]), n_radiomics=int(data.radiomics.shape[1]),
                   n_location=int(data.location.shape[1]), use_image=image, use_radiomics=radiomics,
                   use_location=location)


def fit_predict(train: DlDataset, test: DlDataset, variant: str, config: TrainConfig) -> F64:
    """Train ``variant`` on ``train`` and predict ``test``; single-task trains one network per task."""
    spec = spec_for(train, variant)
    if VARIANTS[variant][3]:
        return predict(fit(train, spec, config), test)
    out = np.zeros((test.y.shape[0], 3))
    for k in range(3):
        weights = tuple(float(i == k) for i in range(3))
        fitted = fit(train, spec, replace(config, task_weights=(weights[0], weights[1], weights[2])))
        out[:, k] = predict(fitted, test)[:, k]
    return out


@dataclass(frozen=True)
class CvResult:
    """Out-of-fold probabilities per variant ``(n, 3)`` and the fold of every row."""

    fold: npt.NDArray[np.int64]
    probabilities: dict[str, F64]
    seconds: dict[str, float]


def cross_validate(data: DlDataset, variants: Sequence[str], n_folds: int, config: TrainConfig) -> CvResult:
    """Patient-grouped outer folds; every variant on the same folds."""
    folds = grouped_folds(data, n_folds, config.seed)
    fold = np.zeros(data.y.shape[0], dtype=np.int64)
    probs = {v: np.full((data.y.shape[0], 3), np.nan) for v in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for f, (tr, te) in enumerate(folds):
        fold[te] = f
        for v in variants:
            start = time.perf_counter()
            probs[v][te] = fit_predict(data.subset(tr), data.subset(te), v, config)
            seconds[v] += time.perf_counter() - start
            logger.info("fold %d/%d %s: %.1f s", f + 1, n_folds, v, time.perf_counter() - start)
    return CvResult(fold, probs, seconds)
