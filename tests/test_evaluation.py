"""Evaluation protocols: the views each cuts, score averaging, multi-scale on a fully-convolutional ResNet, flip on
in-memory batches, unpadded sharding, and `python -m cnnlab.evaluate` on checkpoints of real train.py runs."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_train
from PIL import Image
from test_imagenet import write_tiny_imagenet
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.imagefolder import ShardSampler
from cnnlab.evaluate import evaluate
from cnnlab.evaluation import EvalProtocol
from cnnlab.models import ResNet

TINY = ["data=synthetic", "data.synthetic_size=[96,50]", "data.batch_size=32", "data.eval_batch_size=16",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar.refresh_rate=0"]


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
    scores = p.log_scores(model, x).exp()
    per_view = torch.stack([torch.stack([model(v[None]).softmax(-1)[0] for v in img_views]) for img_views in x])
    assert torch.allclose(scores, per_view.mean(1), atol=1e-6)
    assert not torch.allclose(scores, per_view[:, 4], atol=1e-4)  # not just the center crop


def test_multiscale_runs_a_fully_convolutional_resnet_on_whole_images_of_any_shape():
    p = EvalProtocol("multiscale", scales=(32, 48, 64))
    images = [gradient_image(60, 90), gradient_image(90, 60), gradient_image(64, 96)]  # two share their shape
    batch, labels = p.collate([(p.views(img), i) for i, img in enumerate(images)])
    assert [tuple(v.shape) for v in batch[1]] == [(3, 48, 72), (3, 72, 48), (3, 48, 72)]
    model = ResNet(depths=[1, 1, 1, 1], widths=[8, 16, 16, 16], block="basic", stem="imagenet", num_classes=7).eval()
    x = EvalProtocol.map(batch, lambda v: v.float() / 255)
    scores = p.log_scores(model, x).exp()
    assert scores.shape == (3, 7) and torch.allclose(scores.sum(1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        expected = torch.stack([torch.stack([model(x[s][i][None]).softmax(-1)[0] for s in range(3)]).mean(0)
                                for i in range(3)])
    assert torch.allclose(scores, expected, atol=1e-5)


def test_flip_averages_an_in_memory_batch_and_its_mirror_image():
    model = Linear().eval()
    x = torch.randn(4, 3, 32, 32)
    scores = EvalProtocol("flip").log_scores(model, x).exp()
    with torch.no_grad():
        expected = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(scores, expected, atol=1e-6)
    assert EvalProtocol("flip").multi_view and not EvalProtocol("center").multi_view


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


def test_evaluate_a_cifar_style_checkpoint_with_flip_from_python_and_the_command_line(tmp_path):
    run_train([*TINY, "eval=flip"], tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    flip, plain = evaluate(ckpt, "flip"), evaluate(ckpt, "none")
    assert flip["n_images"] == plain["n_images"] == 50 and flip["protocol"] == "flip"
    assert 0 <= flip["err1"] <= flip["err5"] + 1 and flip["loss"] != plain["loss"]
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
    assert {r["n_images"] for r in results.values()} == {9}
    assert len({round(r["loss"], 6) for r in results.values()}) == 4  # four different sets of views


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
