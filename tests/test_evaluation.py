"""Evaluation protocols: the views each cuts (AlexNet's 10 patches of the central square included), score averaging,
multi-scale on a fully-convolutional ResNet, VGG/AlexNet's dense evaluation, flip on in-memory batches, unpadded
sharding, and `python -m cnnlab.evaluate` on checkpoints of real train.py runs."""

import subprocess
import sys
from pathlib import Path

import conftest
import pytest
import torch
from conftest import ROOT, run_train
from PIL import Image
from test_imagenet import write_tiny_imagenet
from torchvision.transforms.v2 import functional as TF

from cnnlab.data import imagefolder
from cnnlab.data.imagefolder import ShardSampler
from cnnlab.evaluate import evaluate
from cnnlab.evaluation import EvalProtocol, FullyConvolutional, log_scores
from cnnlab.models import VGG, AlexNet, ResNet

TINY = [*conftest.TINY, "data.synthetic_size=[96,50]", "data.eval_batch_size=16", "trainer.max_epochs=1"]


def gradient_image(h: int = 256, w: int = 300) -> Image.Image:
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return TF.to_pil_image(torch.stack([x % 256, y % 256, (x + y) % 256]).to(torch.uint8))


class Linear(torch.nn.Module):
    """A tiny classifier on mean colour, so each view gets different scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_tencrop_cuts_ten_views_and_its_score_is_the_mean_of_the_views():
    p = EvalProtocol("tencrop", resize=64, crop=48)
    img = gradient_image()
    views = p.views(img)
    assert views.shape == (10, 3, 48, 48) and views.dtype == torch.uint8
    resized = TF.pil_to_tensor(TF.resize(img, 64, antialias=True))  # 64 x 75
    assert torch.equal(views[0], resized[:, :48, :48])  # top-left corner
    # then the 5 crops of the mirror image: the mirrored top-right corner first, ...
    assert torch.equal(views[5], views[1].flip(-1)) and torch.equal(views[6], views[0].flip(-1))
    assert len({tuple(v.flatten().tolist()) for v in views}) == 10  # all different
    model = Linear().eval()
    x = torch.stack([views.float() / 255, p.views(gradient_image(300, 256)).float() / 255])  # N=2 x 10 views
    scores = log_scores(model, x).exp()
    per_view = torch.stack([torch.stack([model(v[None]).softmax(-1)[0] for v in img_views]) for img_views in x])
    assert torch.allclose(scores, per_view.mean(1), atol=1e-6)
    assert not torch.allclose(scores, per_view[:, 4], atol=1e-4)  # not just the center crop


def test_tencrop_square_takes_the_corners_of_the_central_square():
    """Krizhevsky et al. 2012 (4.1): the four corner patches and the center patch of the 256x256 image (its central
    square), against the default's corners of the whole resized rectangle."""
    img = gradient_image(256, 300)  # already 256 on the shorter side: views are plain slices of it
    px = TF.pil_to_tensor(img)
    left = (300 - 256) // 2  # the central square spans columns 22..277
    square = EvalProtocol("tencrop", 256, 224, square=True).views(img)
    rect = EvalProtocol("tencrop", 256, 224).views(img)
    # torchvision's order: top-left, top-right, bottom-left, bottom-right, center, then the same of the mirror image
    for k, (top, lft) in enumerate([(0, left), (0, left + 32), (32, left), (32, left + 32), (16, left + 16)]):
        assert torch.equal(square[k], px[:, top : top + 224, lft : lft + 224]), k
    assert torch.equal(rect[1], px[:, :224, 300 - 224 :])  # the rectangle's top-right corner: columns 76..299
    assert torch.equal(square[4], rect[4])  # the center is the same
    assert torch.equal(square[6], square[0].flip(-1))  # mirror of the top-left is the mirrored image's top-right


def test_multiscale_runs_a_fully_convolutional_resnet_on_whole_images_of_any_shape():
    p = EvalProtocol("multiscale", scales=(32, 48, 64))
    images = [gradient_image(60, 90), gradient_image(90, 60), gradient_image(64, 96)]  # two share their shape
    batch, labels = p.collate([(p.views(img), i) for i, img in enumerate(images)])
    assert [tuple(v.shape) for v in batch[1]] == [(3, 48, 72), (3, 72, 48), (3, 48, 72)]
    model = ResNet(depths=[1, 1, 1, 1], widths=[8, 16, 16, 16], block="basic", stem="imagenet", num_classes=7).eval()
    x = EvalProtocol.map(batch, lambda v: v.float() / 255)
    scores = log_scores(model, x).exp()
    assert scores.shape == (3, 7) and torch.allclose(scores.sum(1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        expected = torch.stack([torch.stack([model(x[s][i][None]).softmax(-1)[0] for s in range(3)]).mean(0)
                                for i in range(3)])
    assert torch.allclose(scores, expected, atol=1e-5)


def test_flip_averages_an_in_memory_batch_and_its_mirror_image():
    model = Linear().eval()
    x = torch.randn(4, 3, 32, 32)
    scores = log_scores(model, EvalProtocol("flip").tensor_views(x)).exp()
    with torch.no_grad():
        expected = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.equal(EvalProtocol("none").tensor_views(x), x)


def tiny_vgg() -> VGG:
    """VGG's layout (5 max-pools, 7x7 avgpool, fc6-fc8) with few channels: 224x224 -> 7x7 maps, as VGG-16's."""
    torch.manual_seed(0)
    return VGG([4, "M", 4, "M", 8, "M", 8, "M", 8, "M"], hidden=16, num_classes=5).eval()


@pytest.mark.parametrize("family", ["vgg", "alexnet"])
def test_dense_evaluation_equals_the_network_at_224_and_averages_the_score_map_above(family):
    """Simonyan & Zisserman 2015 (3.2): fc layers as convolutions over the whole image, the class score map averaged.
    At 224 the map is one position: the network's own output. At 320 it is the classifier of every k x k window."""
    if family == "vgg":
        model = tiny_vgg()
    else:
        torch.manual_seed(0)
        model = AlexNet(widths=[8, 8, 8, 8, 8], groups=[1, 1, 1, 1, 1], hidden=16, num_classes=5).eval()
    for m in model.classifier:  # logits of order 1 (the default init's are ~1e-5), so differences are visible
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0, 0.5)
    dense, k = FullyConvolutional(model).eval(), model.avgpool.output_size
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        assert ref.abs().max() > 0.1 and torch.allclose(dense(x), ref, rtol=1e-4, atol=1e-5)
        big = torch.rand(2, 3, 320, 320)
        fmap = model.features(big)  # VGG: 10 x 10; AlexNet: 9 x 9
        h, w = fmap.shape[-2:]
        windows = [model.classifier(fmap[:, :, i : i + k, j : j + k].flatten(1))
                   for i in range(h - k + 1) for j in range(w - k + 1)]
        expected = torch.stack(windows).mean(0)
        assert len(windows) > 1 and torch.allclose(dense(big), expected, rtol=1e-4, atol=1e-5)
        assert (dense(big) - model(big)).abs().max() > 0.01  # not the 7x7-pooled forward


def test_dense_protocol_views_and_refusals():
    p = EvalProtocol("dense", scales=(64, 96), flip=True)
    views = p.views(gradient_image(60, 90))
    assert [tuple(v.shape) for v in views] == [(3, 64, 96), (3, 64, 96), (3, 96, 144), (3, 96, 144)]
    assert torch.equal(views[1], views[0].flip(-1))  # each scale and its mirror image
    with pytest.raises(ValueError, match="eval=dense needs .* got ResNet.*use eval=multiscale"):
        FullyConvolutional(ResNet(depths=[1, 1, 1, 1], widths=[8, 8, 8, 8], block="basic", stem="imagenet"))


def test_protocol_values_are_checked():
    with pytest.raises(ValueError, match="got 'fivecrop'"):
        EvalProtocol("fivecrop")
    with pytest.raises(ValueError, match="crop 300 must be <= resize 256"):
        EvalProtocol("center", 256, 300)


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_evaluation_shards_count_every_image_once_and_training_shards_are_equal(world):
    n = 20
    shards = [list(ShardSampler(n, False, 0, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    train = [list(ShardSampler(n, True, 0, r, world)) for r in range(world)]
    assert len({len(s) for s in train}) == 1 and len(set(sum(train, []))) == len(train[0]) * world


def test_training_shard_resumed_mid_epoch_yields_the_rest_of_that_epoch():
    """A preempted ImageNet run resumes at (epoch 1, batch 2): the images of batches 2.. of epoch 1, in order."""
    full = ShardSampler(40, True, 0, 1, 2)
    full.set_epoch(1)
    resumed = ShardSampler(40, True, 0, 1, 2, position=lambda: (1, 2), batch_size=4)
    resumed.set_epoch(1)
    assert list(resumed) == list(full)[8:]
    resumed.set_epoch(2)  # the next epoch is whole again
    full.set_epoch(2)
    assert list(resumed) == list(full)


def test_evaluate_a_cifar_style_checkpoint_with_flip(tmp_path):
    run_train([*TINY, "eval=flip"], tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    flip, plain = evaluate(ckpt, "flip"), evaluate(ckpt, "none")
    assert flip["n_images"] == plain["n_images"] == 50 and flip["protocol"] == "flip"
    assert flip["err5"] <= flip["err1"] and plain["err5"] <= plain["err1"]  # top-5 errs no more than top-1
    assert flip["loss"] != plain["loss"]  # the mirror images were scored


@pytest.mark.slow  # a fresh interpreter imports torch + Lightning: ~1 min on a shared CPU
def test_evaluate_from_the_command_line(tmp_path):
    run_train([*TINY, "eval=flip"], tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    flip = evaluate(ckpt, "flip")
    out = subprocess.run([sys.executable, "-m", "cnnlab.evaluate", f"ckpt={ckpt}", "eval=flip",
                          "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"50 images: top-1 error {100 * flip['err1']:.2f}%" in out


def train_tiny_imagenet(tmp_path: Path) -> None:
    """One epoch of a narrow ResNet-18 on the 3-class folder at tmp_path/imagenet, into tmp_path/run."""
    run_train(["data=imagenet", f"data.root={tmp_path / 'imagenet'}", "data.num_classes=3", "data.batch_size=7",
               "data.num_workers=0", "augment.size=32", "augment.shorter_side=[36,48]", "eval.resize=36",
               "eval.crop=32", "model=resnet18", "model.widths=[8,8,16,16]", "trainer.accelerator=cpu",
               "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0"],
              tmp_path / "run")


def test_evaluate_an_image_folder_checkpoint_with_each_protocol(tmp_path):
    write_tiny_imagenet(tmp_path / "imagenet", {"train": 4, "val": 3})
    train_tiny_imagenet(tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    over = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "data.num_workers=0", "eval.resize=36",
            "eval.crop=32"]
    results = {p: evaluate(ckpt, p, [*over, *(["eval.scales=[32,40]"] if p == "multiscale" else [])])
               for p in ("center", "flip", "tencrop", "multiscale")}
    results["square"] = evaluate(ckpt, "tencrop", [*over, "eval.square=true"])  # AlexNet's 10 patches
    assert {r["n_images"] for r in results.values()} == {9}
    assert len({round(r["loss"], 6) for r in results.values()}) == 5  # five different sets of views


def test_reading_an_image_folder_with_the_classes_in_turn_changes_no_result(tiny_ckpt, cifar10_slice, monkeypatch):
    """The val/test order that takes the classes in turn (debug limits see every class) scores what the folder's
    own class-sorted order scores: top-1/top-5 misses and the loss are sums over the images."""
    over = ["data=imagenet", f"data.root={cifar10_slice}", "data.val_dir=test", "data.num_classes=10",
            "data.num_workers=0", "data.eval_batch_size=16", "eval.resize=32", "eval.crop=32",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
    across = evaluate(tiny_ckpt, "center", over)
    calls = []
    monkeypatch.setattr(imagefolder, "across_classes", lambda labels: calls.append(1) or list(range(len(labels))))
    folder_order = evaluate(tiny_ckpt, "center", over)
    assert calls and across["n_images"] == folder_order["n_images"] == 100
    assert (across["err1"], across["err5"]) == (folder_order["err1"], folder_order["err5"])
    assert across["loss"] == pytest.approx(folder_order["loss"], rel=1e-5)  # float sums in another order


def test_evaluate_a_vgg_checkpoint_densely(tmp_path):
    """A narrow VGG (global 1x1 avgpool, fc6-fc8) trained one epoch by train.py, then evaluated with eval=dense: the
    module applies fc6-fc8 at every position of the larger scales' feature maps, so the scores differ from
    eval=multiscale (which pools first) on the very same views."""
    write_tiny_imagenet(tmp_path / "imagenet", {"train": 4, "val": 3})
    run_train(["data=imagenet", f"data.root={tmp_path / 'imagenet'}", "data.num_classes=3", "data.batch_size=7",
               "data.num_workers=0", "augment.size=32", "augment.shorter_side=[36,48]", "eval.resize=36",
               "eval.crop=32", "model=vgg11", "model.cfg=[8,M,8,M,8,M,8,M,8,M]", "model.hidden=16",
               "model.avgpool_size=1", "trainer.accelerator=cpu", "trainer.max_epochs=1",
               "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    over = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "data.num_workers=0",
            "eval.scales=[64,96]", "eval.flip=true"]
    dense, multi = (evaluate(tmp_path / "run" / "checkpoints" / "last.ckpt", p, over) for p in ("dense", "multiscale"))
    assert dense["n_images"] == multi["n_images"] == 9 and dense["protocol"] == "dense"
    assert abs(dense["loss"] - multi["loss"]) > 1e-6


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(tmp_path):
    """15 val images over 2 CPU processes (gloo) in batches of 7: rank 0 takes 8 (2 batches), rank 1 7 (1 batch); no
    padded duplicates, so the metrics equal the 1-process run's to the last digit."""
    write_tiny_imagenet(tmp_path / "imagenet", {"train": 4, "val": 5})
    train_tiny_imagenet(tmp_path)
    lines = []
    for devices in (1, 2):
        out = subprocess.run([sys.executable, "-m", "cnnlab.evaluate", f"ckpt={tmp_path}/run/checkpoints/last.ckpt",
                              "eval=tencrop", "eval.resize=36", "eval.crop=32", "data.eval_batch_size=7",
                              "data.num_workers=0", "trainer.accelerator=cpu", f"trainer.devices={devices}",
                              "trainer.strategy=ddp", "trainer.enable_progress_bar=false"],
                             cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
        lines.append([ln for ln in (out.stdout + out.stderr).splitlines() if "eval=tencrop, " in ln])
    assert len(lines[0]) == len(lines[1]) == 1 and "15 images" in lines[0][0]
    assert lines[0][0] == lines[1][0]
