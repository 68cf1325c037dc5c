"""Every augment preset composes and does what its paper says: crop geometry, flip, PCA lighting, the policies,
random erasing, mixup/cutmix soft targets with the module's soft-target loss and its one label smoothing, the same
per-batch stage on in-memory data, and progressive resizing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_run
from hydra.utils import instantiate
from PIL import Image

from cnnlab.data import InMemoryDataModule
from cnnlab.data.augment import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVEC, Augment, PCALighting
from cnnlab.module import ClassifierModule

PRESETS = ["alexnet", "resnet", "inception", "autoaugment", "randaugment", "trivialaugment", "modern", "progressive"]
IN_MEMORY_PRESETS = ["cifar", "none"]
MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)


def photo(h: int = 375, w: int = 500) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_outputs_have_the_right_shapes_dtypes_and_ranges(name, tmp_path):
    cfg = compose_run(["data=imagenet", f"augment={name}"], tmp_path)
    preset = instantiate(cfg.augment)
    assert isinstance(preset, Augment)
    np.random.seed(0)
    torch.manual_seed(0)
    x = torch.stack([preset.image(photo(), preset.size_at(0)) for _ in range(8)])
    side = preset.size_at(0)
    assert x.dtype == torch.uint8 and x.shape == (8, 3, side, side)
    y = torch.arange(8) % 5
    out, targets = preset.batch(x, y, MEAN, STD, num_classes=5)
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()
    assert out.min() >= (0 - max(IMAGENET_MEAN)) / min(IMAGENET_STD) - 1.5  # lighting shifts by ~0.1 at most
    assert out.max() <= (1 - min(IMAGENET_MEAN)) / min(IMAGENET_STD) + 1.5
    if name == "modern":  # mixup/cutmix: soft targets, two classes mixed per image (smoothing is the loss's)
        assert targets.shape == (8, 5) and torch.allclose(targets.sum(1), torch.ones(8))
        assert ((targets > 0).sum(1) <= 2).all() and (targets.max(1).values < 1).any()
    else:
        assert torch.equal(targets, y)


@pytest.mark.parametrize("name", IN_MEMORY_PRESETS)
def test_in_memory_presets_crop_and_flip_per_batch_and_normalize(name, tmp_path):
    cfg = compose_run([f"augment={name}"], tmp_path)
    preset = instantiate(cfg.augment)
    assert isinstance(preset, Augment) and preset.in_memory
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    out, y = preset.batch(x, torch.arange(64), mean, std, 10, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.equal(y, torch.arange(64))
    plain = (x.float() / 255 - 0.5) / 0.25
    changed = (out != plain).flatten(1).any(1)
    assert changed.sum() > 32 if name == "cifar" else not changed.any()  # most images moved or mirrored


def test_per_batch_stages_work_on_in_memory_data_too():
    """The image-folder presets' per-batch stages (mixup, policies, lighting) on CIFAR-style batches: one interface."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    mixed = Augment(crop="pad", crop_padding=4, flip=True, mixup=0.2, policy="trivialaugment", lighting=0.1)
    out, soft = mixed.batch(x, torch.arange(16) % 10, MEAN, STD, 10, torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32) and soft.shape == (16, 10) and torch.allclose(soft.sum(1), torch.ones(16))
    data = InMemoryDataModule("synthetic", synthetic_size=(64, 8), batch_size=16, device_resident=False,
                              augment=Augment(crop="pad", crop_padding=4, flip=True, mixup=0.2))
    data.setup()
    x, y = next(iter(data.train_dataloader()))  # what the module trains on with augment=cifar augment.mixup=0.2
    assert x.dtype == torch.float32 and y.shape == (16, 10) and (y.max(1).values < 1).any()


def test_crop_geometry_follows_the_papers():
    np.random.seed(0)
    h, w = 375, 500
    alexnet = Augment(crop="shorter_side", shorter_side=(256, 256), center_square=True)
    for _, left, bh, bw in (alexnet.box(h, w) for _ in range(500)):
        assert bh == bw == round(224 * 375 / 256)  # 224 of the 256 x 256 image
        assert left >= (w - h) // 2 and left + bw <= (w - h) // 2 + h  # inside the central square
    resnet = np.array([Augment(crop="shorter_side").box(h, w) for _ in range(2000)])
    assert (resnet[:, 2] == resnet[:, 3]).all()
    sides = 224 * 375 / resnet[:, 2]  # the shorter side the image was resized to
    assert 255 <= sides.min() < 262 and 470 < sides.max() <= 481
    assert resnet[:, 1].max() + resnet[resnet[:, 1].argmax(), 3] > 450  # anywhere, not only the central square
    inception = np.array([Augment().box(h, w) for _ in range(2000)])
    area, ratio = inception[:, 2] * inception[:, 3] / (h * w), inception[:, 3] / inception[:, 2]
    assert 0.075 < area.min() < 0.12 and area.max() > 0.9
    assert ratio.min() > 0.74 and ratio.max() < 1.35


def test_flip_mirrors_about_half_of_the_images():
    np.random.seed(0)
    img = photo(224, 224)
    preset = Augment(crop="resized", area=(1, 1), ratio=(1, 1), flip=True)
    same = torch.as_tensor(np.asarray(img)).permute(2, 0, 1)
    outs = [preset.image(img) for _ in range(200)]
    flipped = [torch.equal(o, same.flip(-1)) for o in outs]
    assert 70 < sum(flipped) < 130
    assert all(f or torch.equal(o, same) for o, f in zip(outs, flipped, strict=True))


def test_pca_lighting_adds_one_colour_along_alexnets_eigenvectors_per_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    shift = PCALighting(0.1)(x) - x
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)  # constant over pixels
    rgb = shift[:, :, 0, 0]
    coeffs = rgb @ torch.tensor(PCA_EIGVEC)  # back to alpha_i * lambda_i
    assert coeffs[:, 0].std() > 5 * coeffs[:, 2].std()  # the largest eigenvalue dominates
    assert 0.01 < coeffs[:, 0].std() < 0.04  # 0.1 x 0.2175


def test_policies_and_random_erasing_change_images_per_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    y = torch.zeros(6, dtype=torch.long)
    for policy in ("autoaugment", "randaugment", "trivialaugment"):
        out, _ = Augment(size=32, policy=policy).batch(x, y, MEAN, STD, 2)
        plain, _ = Augment(size=32).batch(x, y, MEAN, STD, 2)
        assert not torch.allclose(out, plain)
    erased, _ = Augment(size=32, erasing=0.99).batch(x, y, MEAN, STD, 2)
    assert ((erased == 0).flatten(1).float().mean(1) > 0.01).sum() >= 5  # a zeroed (mean) rectangle in most


def test_mixup_cutmix_soft_targets_train_through_the_module_with_its_one_label_smoothing():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    y = torch.arange(8) % 4
    for mix in ({"mixup": 0.2}, {"cutmix": 1.0}):
        out, soft = Augment(size=16, **mix).batch(x, y, MEAN, STD, 4)
        assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
        assert (soft.max(1).values < 1).any()  # mixed
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    for eps in (0.0, 0.1):
        module = ClassifierModule(model, optimizer=None, schedule=None, num_classes=4, label_smoothing=eps)
        module.log = lambda *a, **k: None
        loss = module.training_step((out, soft), 0)
        smoothed = soft * (1 - eps) + eps / 4  # applied once, whatever made the targets soft
        expected = -(smoothed * F.log_softmax(model(out), -1)).sum(1).mean()
        assert torch.allclose(loss, expected, atol=1e-6)
    wrong = (model(out).argmax(1) != soft.argmax(1)).float().mean()  # soft targets are scored by their top class
    assert module.metrics["train"].compute()["err1"] == pytest.approx(wrong.item())


def test_progressive_resizing_grows_in_steps_of_32():
    preset = Augment(size=192, min_size=160, ramp=(65, 76))
    sizes = [preset.size_at(e) for e in range(88)]
    assert sizes[0] == sizes[65] == 160 and sizes[76] == sizes[87] == 192
    assert sorted(sizes) == sizes and set(sizes) <= {160, 192} and Augment().size_at(10) == 224
    assert preset.image(photo(), preset.size_at(0)).shape == (3, 160, 160)


def test_bad_preset_values_fail_naming_them():
    with pytest.raises(ValueError, match="crop must be one of .* got 'random'"):
        Augment(crop="random")
    with pytest.raises(ValueError, match="policy must be one of .* got 'augmix'"):
        Augment(policy="augmix")
    with pytest.raises(ValueError, match=r"shorter_side \(200, 300\) must be >= size 224"):
        Augment(crop="shorter_side", shorter_side=(200, 300))
    with pytest.raises(ValueError, match="crop_padding=4 with crop='resized'"):
        Augment(crop="resized", crop_padding=4)
    with pytest.raises(ValueError, match="crop='pad' works on in-memory batches"):
        Augment(crop="pad", crop_padding=4).image(photo())


def test_the_names_older_checkpoints_configs_hold_still_build_the_same_augmentation(caplog):
    """Run configs stored in checkpoints name cnnlab.data.BatchAugment / ImageAugment; cnnlab.evaluate rebuilds them."""
    old_cifar = instantiate({"_target_": "cnnlab.data.BatchAugment", "crop_padding": 4, "flip": True})
    assert (old_cifar.crop, old_cifar.crop_padding, old_cifar.flip) == ("pad", 4, True)
    old_modern = instantiate({"_target_": "cnnlab.data.ImageAugment", "crop": "resized", "label_smoothing": 0.1})
    assert old_modern.crop == "resized" and "module.label_smoothing" in caplog.text  # said, not silently dropped
