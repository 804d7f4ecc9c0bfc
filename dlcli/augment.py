"""Training-time data augmentation on the device, a whole batch at a time (``training.augment``).

The batch arrives as the dataset stores it, ``uint8`` N×C×H×W on the training device. Each
transform is a few tensor operations over the whole batch — no per-sample Python loop:

1. ``translate: P``  zero-pad by P pixels and crop a random H×W window back out (a shift of up
   to P pixels each way: the "random crop with padding" of the CIFAR/ResNet recipes);
2. ``flip: true``    mirror a random half of the images left-right;
3. ``erase: p``      with probability p per image, fill a random rectangle (2-33% of the image,
   aspect 0.3-3.3) with random pixels (random erasing, Zhong et al. 2017);
4. the batch becomes floats in [0, 1] (pixel / 255);
5. ``mixup: a`` / ``cutmix: a``  blend each image with its partner in the reversed batch
   (``x.flip(0)``: the batch order is already a random permutation), with a weight
   λ ~ Beta(a, a) drawn once per batch: mixup blends whole images, cutmix pastes a box of area
   1 - λ. The targets become class probabilities, λ·onehot(y) + (1 - λ)·onehot(y reversed),
   so the cross-entropy is λ·loss(y) + (1 - λ)·loss(y reversed). With both on, each batch
   takes one of the two at random; ``mix_prob`` is the chance a batch is mixed at all.

An :class:`Augmenter` is the Trainer's ``augment`` (dlcli.engine, step 2 of ``train_step``):
``(uint8 images, labels) → (float images in [0, 1], labels or class probabilities)``.

Randomness comes from two generators owned by :class:`Augmenter`, never from torch's global
one: a device generator for the per-image draws and a CPU one for the per-batch scalars (λ,
the cutmix box, which mix), so nothing waits for a GPU. Both are seeded from
``training.seed`` and their states are part of a checkpoint, so a resumed run augments exactly
as an uninterrupted one. Evaluation and prediction never call this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dlcli.config import AugmentConfig

# Random erasing's rectangle (Zhong et al.'s defaults): area fraction and aspect ratio ranges.
ERASE_AREA = (0.02, 0.33)
ERASE_ASPECT = (0.3, 1 / 0.3)


@dataclass
class Mixed:
    """A mixed batch's second labels and weight: the loss is
    ``lam * loss(logits, y) + (1 - lam) * loss(logits, partner)``."""

    partner: torch.Tensor
    lam: float

    def targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``lam * onehot(labels) + (1 - lam) * onehot(partner)``: class probabilities."""
        first = F.one_hot(labels, num_classes).float()
        return torch.lerp(F.one_hot(self.partner, num_classes).float(), first, self.lam)


def is_on(augment: AugmentConfig | None) -> bool:
    """Does the config ask for any augmentation?"""
    if augment is None:
        return False
    return bool(
        augment.translate or augment.flip or augment.erase or augment.mixup or augment.cutmix
    )


def make_augmenter(
    augment: AugmentConfig | None, device: torch.device, seed: int, num_classes: int
) -> Augmenter | None:
    """The Augmenter ``training.augment`` asks for, or None when it asks for nothing."""
    if augment is None or not is_on(augment):
        return None
    return Augmenter(augment, device, seed, num_classes=num_classes)


class Augmenter:
    """The batch transform of ``training.augment``, with its own seeded generators."""

    def __init__(
        self, augment: AugmentConfig, device: torch.device, seed: int, *, num_classes: int
    ) -> None:
        self.augment = augment
        self.device = device
        self.num_classes = num_classes  # the width of a mixed batch's target probabilities
        self.images = torch.Generator(device=device)
        self.batches = torch.Generator()  # CPU: per-batch scalars without a device sync
        self.seed(seed)

    def seed(self, seed: int) -> None:
        # Offsets keep these streams apart from the split's, the weights' and the shuffle's.
        self.images.manual_seed(seed * 1_000_003 + 17)
        self.batches.manual_seed(seed * 1_000_003 + 29)

    # --- the transform --------------------------------------------------------------------

    def __call__(
        self, rows: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Trainer's ``augment``: uint8 N×C×H×W and labels → (float32 in [0, 1], the
        labels, or class probabilities N×classes for a mixed batch)."""
        x, mixed = self.transform(rows, labels)
        return x, labels if mixed is None else mixed.targets(labels, self.num_classes)

    def transform(
        self, rows: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, Mixed | None]:
        """uint8 N×C×H×W → (float32 N×C×H×W in [0, 1], how the batch was mixed or None)."""
        augment = self.augment
        if rows.dim() == 4 and len(rows):
            if augment.translate:
                rows = self.translate(rows, augment.translate)
            if augment.flip:
                rows = self.flip(rows)
            if augment.erase:
                rows = self.erase(rows, augment.erase)
        x = torch.div(rows, 255)
        return self.mix(x, labels)

    def translate(self, rows: torch.Tensor, pad: int) -> torch.Tensor:
        """Zero-pad by ``pad`` and crop an H×W window at a random offset, per image (one
        gather over the padded batch)."""
        n, channels, height, width = rows.shape
        padded = F.pad(rows, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=self.images, device=rows.device)
        ys = offsets[:, 0, None] + torch.arange(height, device=rows.device)  # n×H
        xs = offsets[:, 1, None] + torch.arange(width, device=rows.device)  # n×W
        batch = torch.arange(n, device=rows.device)[:, None, None, None]
        channel = torch.arange(channels, device=rows.device)[None, :, None, None]
        return padded[batch, channel, ys[:, None, :, None], xs[:, None, None, :]]

    def flip(self, rows: torch.Tensor) -> torch.Tensor:
        """Mirror each image left-right with probability 1/2."""
        chosen = torch.rand(len(rows), generator=self.images, device=rows.device) < 0.5
        return torch.where(chosen[:, None, None, None], rows.flip(3), rows)

    def erase(self, rows: torch.Tensor, probability: float) -> torch.Tensor:
        """With ``probability`` per image, random pixels in a random rectangle."""
        n, _, height, width = rows.shape
        device = rows.device
        u = torch.rand(n, 5, generator=self.images, device=device)
        area = (ERASE_AREA[0] + u[:, 0] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
        low, high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        aspect = torch.exp(low + u[:, 1] * (high - low))
        h = torch.sqrt(area * aspect).round().clamp(1, height)
        w = torch.sqrt(area / aspect).round().clamp(1, width)
        top = (u[:, 2] * (height - h + 1)).floor()
        left = (u[:, 3] * (width - w + 1)).floor()
        erased = u[:, 4] < probability
        ys = torch.arange(height, device=device)[None, :, None]
        xs = torch.arange(width, device=device)[None, None, :]
        inside = (
            (ys >= top[:, None, None])
            & (ys < (top + h)[:, None, None])
            & (xs >= left[:, None, None])
            & (xs < (left + w)[:, None, None])
            & erased[:, None, None]
        )
        noise = torch.randint(
            0, 256, rows.shape, generator=self.images, device=device, dtype=torch.uint8
        )
        return torch.where(inside[:, None], noise, rows)

    def mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Mixed | None]:
        """Mixup or cutmix of float images with the reversed batch (once per batch)."""
        augment = self.augment
        if (
            not (augment.mixup or augment.cutmix)
            or len(x) < 2
            or self._uniform() >= augment.mix_prob
        ):
            return x, None
        use_cutmix = bool(augment.cutmix) and (not augment.mixup or self._uniform() < 0.5)
        alpha = augment.cutmix if use_cutmix else augment.mixup
        lam = self._beta(alpha)
        partner = labels.flip(0)
        if use_cutmix and x.dim() == 4:
            x, lam = self._paste_box(x, lam)
        else:
            x = torch.lerp(x.flip(0), x, lam)  # lam * x + (1 - lam) * partner image
        return x, Mixed(partner, lam)

    def _paste_box(self, x: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """Paste a box of about (1 - lam) of the area from the partner image; lam becomes the
        area actually kept (the box is clipped at the border)."""
        height, width = x.shape[2], x.shape[3]
        ratio = math.sqrt(1.0 - lam)
        h, w = int(height * ratio), int(width * ratio)
        cy, cx = int(self._uniform() * height), int(self._uniform() * width)
        top, bottom = max(cy - h // 2, 0), min(cy + h - h // 2, height)
        left, right = max(cx - w // 2, 0), min(cx + w - w // 2, width)
        if bottom <= top or right <= left:
            return x, 1.0
        x = x.clone()
        x[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        return x, 1.0 - (bottom - top) * (right - left) / (height * width)

    # --- per-batch scalars (CPU generator) ------------------------------------------------

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.batches))

    def _normal(self) -> float:
        return float(torch.randn((), generator=self.batches))

    def _gamma(self, alpha: float) -> float:
        """Gamma(alpha, 1) by Marsaglia and Tsang (2000); alpha < 1 through the boost
        Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha)."""
        if alpha < 1:
            return self._gamma(alpha + 1) * float(self._uniform() ** (1 / alpha))
        d = alpha - 1 / 3
        c = 1 / math.sqrt(9 * d)
        while True:
            z = self._normal()
            v = (1 + c * z) ** 3
            if v <= 0:
                continue
            u = self._uniform()
            if u > 0 and math.log(u) < 0.5 * z * z + d - d * v + d * math.log(v):
                return d * v

    def _beta(self, alpha: float) -> float:
        a, b = self._gamma(alpha), self._gamma(alpha)
        return a / (a + b) if a + b > 0 else 0.5

    # --- state: part of a checkpoint -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.get_state(),
            "batches": self.batches.get_state(),
            "device": self.device.type,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue both streams. A run resumed on another kind of device (``--device``)
        cannot take the per-image generator's state: it is seeded afresh from the per-batch
        one, deterministically (that run is not bit-identical to an uninterrupted one anyway).
        """
        self.batches.set_state(state["batches"].to("cpu", torch.uint8))
        if state.get("device") == self.device.type:
            self.images.set_state(state["images"].to("cpu", torch.uint8))
            return
        fork = torch.Generator().manual_seed(0)
        fork.set_state(self.batches.get_state())
        self.images.manual_seed(int(torch.randint(0, 2**62, (), generator=fork)))
