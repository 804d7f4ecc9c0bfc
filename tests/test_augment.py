"""training.augment: each transform on a tiny batch (shapes, values, determinism, identity
when off), mixup/cutmix and their loss, and the generator state a checkpoint carries."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlcli.augment import Augmenter, Mixed, is_on
from dlcli.config import AugmentConfig
from dlcli.evaluation import Objective

CPU = torch.device("cpu")


def batch(n: int = 8, channels: int = 1, size: int = 6) -> torch.Tensor:
    """Distinct uint8 images: pixel values 1..255 so that zero padding shows."""
    values = torch.arange(n * channels * size * size) % 255 + 1
    return values.reshape(n, channels, size, size).to(torch.uint8)


def labels(n: int = 8) -> torch.Tensor:
    return torch.arange(n) % 4


def augmenter(seed: int = 0, **settings: float | int | bool) -> Augmenter:
    return Augmenter(AugmentConfig(**settings), CPU, seed, num_classes=4)  # type: ignore[arg-type]


def test_off_is_the_plain_scaling() -> None:
    rows = batch()
    x, mixed = augmenter().transform(rows, labels())
    assert mixed is None
    assert torch.equal(x, rows.float() / 255)
    assert not is_on(None) and not is_on(AugmentConfig())
    assert is_on(AugmentConfig(flip=True)) and is_on(AugmentConfig(mixup=0.2))


def test_translate_shifts_each_image_within_the_padding() -> None:
    rows = batch(n=32)
    out = augmenter(translate=2).translate(rows, 2)
    assert out.shape == rows.shape and out.dtype == torch.uint8
    padded = F.pad(rows, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(rows)):  # each output is one window of the padded image
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])
        ]
        assert found, f"image {i} is not a crop of its padded self"
        shifts.add(found[0])
    assert len(shifts) > 5  # offsets vary per image


def test_translate_keeps_channels_apart() -> None:
    rows = batch(n=4, channels=3)
    out = augmenter(translate=1).translate(rows, 1)
    padded = F.pad(rows, (1, 1, 1, 1))
    for i in range(4):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])
            for dy in range(3)
            for dx in range(3)
        )


def test_flip_mirrors_about_half() -> None:
    rows = batch(n=200)
    out = augmenter(flip=True).flip(rows)
    flipped = [torch.equal(out[i], rows[i].flip(2)) for i in range(len(rows))]
    kept = [torch.equal(out[i], rows[i]) for i in range(len(rows))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_erase_fills_one_rectangle_of_some_images() -> None:
    rows = torch.zeros(300, 1, 12, 12, dtype=torch.uint8)
    out = augmenter(erase=0.5).erase(rows, 0.5)
    assert out.shape == rows.shape and out.dtype == torch.uint8
    changed = (out != 0).flatten(1).any(dim=1)
    assert 100 < int(changed.sum()) < 200  # about half of the images
    for i in torch.nonzero(changed).flatten().tolist()[:20]:
        ys, xs = torch.nonzero(out[i, 0], as_tuple=True)
        box = out[i, 0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        area = box.numel() / 144
        assert area <= 0.5  # at most 33% drawn, rounding and clamping aside


def test_erase_never_touches_a_batch_at_zero_probability() -> None:
    rows = batch()
    assert torch.equal(augmenter().erase(rows, 0.0), rows)


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    settings = {"translate": 2, "flip": True, "erase": 0.5, "mixup": 0.4, "cutmix": 1.0}
    rows, y = batch(n=16), labels(16)
    a, mixed_a = augmenter(0, **settings).transform(rows, y)
    b, mixed_b = augmenter(0, **settings).transform(rows, y)
    c, _ = augmenter(1, **settings).transform(rows, y)
    assert torch.equal(a, b)
    assert mixed_a is not None and mixed_b is not None  # mix_prob 1: always mixed
    assert torch.equal(mixed_a.partner, mixed_b.partner) and mixed_a.lam == mixed_b.lam
    assert not torch.equal(a, c)
    assert a.dtype == torch.float32 and float(a.min()) >= 0 and float(a.max()) <= 1


def test_state_round_trip_continues_the_stream() -> None:
    settings = {"translate": 2, "flip": True, "erase": 0.3, "cutmix": 1.0}
    rows, y = batch(n=16), labels(16)
    first = augmenter(3, **settings)
    first.transform(rows, y)
    state = first.state_dict()
    expected, expected_mix = first.transform(rows, y)
    second = augmenter(99, **settings)
    second.load_state_dict(state)
    got, got_mix = second.transform(rows, y)
    assert torch.equal(expected, got)
    assert (expected_mix is None) == (got_mix is None)
    if expected_mix is not None and got_mix is not None:
        assert expected_mix.lam == got_mix.lam


def test_mixup_blends_with_the_reversed_batch() -> None:
    rows, y = batch(n=6), labels(6)
    x, mixed = augmenter(mixup=0.5).mix(rows.float() / 255, y)
    assert mixed is not None and 0 <= mixed.lam <= 1
    plain = rows.float() / 255
    assert torch.allclose(x, mixed.lam * plain + (1 - mixed.lam) * plain.flip(0), atol=1e-6)
    assert torch.equal(mixed.partner, y.flip(0))


def test_cutmix_pastes_a_box_and_reports_the_kept_area() -> None:
    plain = batch(n=6, size=16).float() / 255
    for seed in range(5):
        x, mixed = augmenter(seed, cutmix=1.0).mix(plain, labels(6))
        assert mixed is not None
        from_partner = (x != plain) & (x == plain.flip(0))
        changed = (x != plain).any(dim=1)[0]  # the first image's pasted pixels
        assert bool(((x == plain) | from_partner).all())
        kept = 1 - float(changed.float().mean())
        assert math.isclose(mixed.lam, kept, abs_tol=1e-6) or mixed.lam == 1.0


def test_mix_prob_zero_never_mixes() -> None:
    x = batch().float() / 255
    for seed in range(5):
        out, mixed = augmenter(seed, mixup=1.0, mix_prob=0.0).mix(x, labels())
        assert mixed is None and torch.equal(out, x)


def test_beta_draws_have_the_right_mean_and_spread() -> None:
    aug = augmenter(7)
    for alpha in (0.2, 1.0, 3.0):
        draws = torch.tensor([aug._beta(alpha) for _ in range(3000)])
        assert abs(float(draws.mean()) - 0.5) < 0.03
        variance = 1 / (4 * (2 * alpha + 1))  # Beta(a, a)
        assert abs(float(draws.var()) - variance) < 0.2 * variance


def test_mixed_targets_make_the_loss_the_weighted_sum() -> None:
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    targets = Mixed(y.flip(0), 0.3).targets(y, 3)
    assert torch.allclose(targets.sum(dim=1), torch.ones(5))
    got = Objective(3).loss_of(logits, targets)
    want = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y.flip(0))
    assert torch.allclose(got, want)
    assert torch.equal(Objective(3).loss_of(logits, y), F.cross_entropy(logits, y))


def test_the_batch_transform_gives_labels_or_probabilities() -> None:
    rows, y = batch(n=6), labels(6)
    x, targets = augmenter(flip=True)(rows, y)
    assert x.dtype == torch.float32 and torch.equal(targets, y)
    x, targets = augmenter(mixup=0.5)(rows, y)
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(dim=1), torch.ones(6))


def test_flat_inputs_skip_the_image_transforms() -> None:
    rows = torch.arange(24, dtype=torch.uint8).reshape(4, 6)
    x, mixed = augmenter(translate=2, flip=True, erase=0.5).transform(rows, labels(4))
    assert mixed is None and torch.equal(x, rows.float() / 255)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_images_stay_there() -> None:
    device = torch.device("cuda")
    aug = Augmenter(
        AugmentConfig(translate=2, flip=True, erase=0.5, cutmix=1.0), device, 0, num_classes=4
    )
    x, _ = aug.transform(batch(16).to(device), labels(16).to(device))
    assert x.device.type == "cuda"
    state = aug.state_dict()
    aug.load_state_dict(state)
