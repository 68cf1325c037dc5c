"""cnnlab.visualize on the checkpoint of a tiny real run: first-layer filters, top-9 images of a channel, Grad-CAM and
the confusion matrix, each checked against a direct computation."""

import csv
import math
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from conftest import DATASETS, run_train
from hydra.utils import instantiate
from PIL import Image
from torch import nn

from cnnlab.predict import Checkpoint, load
from cnnlab.visualize import confusion, filters, grad_cam, main, top9

TINY = [*conftest.TINY, "data.synthetic_size=[96,48]", "data.eval_batch_size=20", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    run_train(TINY, run)
    return run


def test_filters_grid_shows_every_first_layer_kernel_scaled_on_its_own(run, tmp_path):
    ck = load(run / "checkpoints" / "last.ckpt")
    grid = filters(ck, tmp_path / "filters.png")
    w = ck.model.conv1.weight.detach()  # 16 x 3 x 3 x 3
    cols = math.ceil(math.sqrt(16 * 4 / 3))  # 5 columns, 4 rows of 30 px tiles (3 px kernels x 10) + 2 px borders
    assert grid.shape == (3, 2 + 4 * 32, 2 + cols * 32)
    tile = grid[:, 2:32, 2:32]  # kernel 0, nearest-upscaled
    expected = (w[0] - w[0].min()) / (w[0].max() - w[0].min())
    torch.testing.assert_close(tile[:, ::10, ::10], expected, atol=1e-6, rtol=0)
    assert Image.open(tmp_path / "filters.png").size == (grid.shape[2], grid.shape[1])


def test_top9_are_the_test_images_that_excite_the_channel_most(run, tmp_path):
    ck = load(run / "checkpoints" / "last.ckpt")
    name, values = top9(ck, tmp_path / "top9.png", layer="layer2", channel=5)
    data = instantiate(ck.cfg.data, _convert_="all")
    data.setup("test")
    acts = []
    hook = ck.model.layer2.register_forward_hook(lambda _m, _i, o: acts.append(o[:, 5].amax((1, 2))))
    with torch.no_grad():
        ck.model(data.normalize(data.splits["test"].x))
    hook.remove()
    assert name == "layer2" and len(values) == 9
    torch.testing.assert_close(values, acts[0].topk(9).values, atol=1e-4, rtol=1e-5)
    assert (tmp_path / "top9.png").is_file()
    # default layer: the last feature map larger than 1x1 (the CIFAR ResNet's last stage, 8x8)
    assert top9(ck, tmp_path / "d.png", channel=0, limit=10)[0] == "layer3"


def test_grad_cam_highlights_the_region_that_drives_the_class():
    """A bright square top-left on black: through a bias-free conv + ReLU + global pooling, only it carries class 0."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    nn.init.uniform_(conv.weight, 0.0, 1.0)  # positive filters: the square excites every channel
    fc = nn.Linear(4, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]]))
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    ck = Checkpoint(model, None, ["object", "background"], torch.zeros(3, 1, 1), torch.ones(3, 1, 1))
    x = torch.zeros(3, 32, 32)
    x[:, 4:12, 4:12] = 1.0
    cam, c, p, layer = grad_cam(ck, x, layer="1")
    assert c == 0 and p > 0.5 and layer == "1" and cam.shape == (32, 32)
    assert cam.max() == pytest.approx(1.0) and cam.min() >= 0
    assert cam[4:12, 4:12].mean() > 0.5 and cam[16:, 16:].max() < 1e-6  # the square, not the empty quadrant


def test_gradcam_and_confusion_commands_on_the_checkpoint(run, tmp_path, capsys):
    ckpt = run / "checkpoints" / "last.ckpt"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(tmp_path / "x.png")
    main([f"ckpt={ckpt}", "what=gradcam", f"image={tmp_path}/x.png", "target=class3", f"out={tmp_path}/cam.png"])
    assert Image.open(tmp_path / "cam.png").size[0] > 600

    main([f"ckpt={ckpt}", "what=confusion", f"out={tmp_path}/cm.png"])
    assert "top-1 error" in capsys.readouterr().out
    rows = list(csv.reader((tmp_path / "cm.csv").open()))
    counts = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
    assert counts.shape == (10, 10) and counts.sum() == 48 and (counts.sum(1) > 0).all()
    metrics = list(csv.DictReader(next(run.glob("csv/version_*/metrics.csv")).open()))
    test_err = next(float(r["test/err1"]) for r in metrics if r.get("test/err1"))
    assert 1 - counts.trace() / counts.sum() == pytest.approx(test_err, abs=1e-6)  # the test stage's own number
    assert (tmp_path / "cm.png").is_file()


def test_bad_layer_channel_or_target_fail_naming_them(run, tmp_path, capsys):
    ck = load(run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="layer='layer9' is not a module of ResNet"):
        top9(ck, tmp_path / "a.png", layer="layer9")
    with pytest.raises(ValueError, match="channel=99 but layer layer1 has 16 channels"):
        top9(ck, tmp_path / "a.png", layer="layer1", channel=99)
    with pytest.raises(ValueError, match="Grad-CAM needs a feature map, but layer fc outputs"):
        grad_cam(ck, torch.zeros(3, 32, 32), layer="fc")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit, match="target='zebra' is neither a class name"):  # the message, exit status 1
        main([f"ckpt={run}/checkpoints/last.ckpt", "what=gradcam", f"image={tmp_path}/x.png", "target=zebra",
              f"out={tmp_path}/c.png"])
    with pytest.raises(SystemExit, match="what=gradcam needs image=<file>"):
        main([f"ckpt={run}/checkpoints/last.ckpt", "what=gradcam", f"out={tmp_path}/c.png"])


def test_confusion_and_top9_read_image_folder_test_sets(tmp_path):
    """An Imagenette checkpoint (tencrop test protocol): one center crop per image, human class names."""
    root = DATASETS / "imagenette2-224"
    if not (root / "val").is_dir():
        pytest.skip(f"Imagenette is not at {root}")
    run_train(["data=imagenette", f"data.root={root}", "data.per_class=1", "data.batch_size=10", "data.num_workers=1",
               "augment.size=32", "augment.shorter_side=[36,48]", "eval=tencrop", "eval.resize=36", "eval.crop=32",
               "model=resnet20", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
               "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    ck = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    counts = confusion(ck, tmp_path / "cm.png")
    assert counts.shape == (10, 10) and counts.sum() == 10 and (counts.sum(1) == 1).all()
    assert (tmp_path / "cm.csv").read_text().startswith("true\\predicted,tench,English springer")
    assert top9(ck, tmp_path / "top9.png", channel=3)[1].shape == (9,)


def test_confusion_limited_on_a_class_sorted_image_folder_fills_one_row_per_class(tiny_ckpt, cifar10_slice, tmp_path):
    """`visualize what=confusion limit=10` on a CIFAR-10 image folder as data=imagenet reads it (class folders in
    order): the ten images are one of each class, ten non-empty rows (the folder's own order gave one row)."""
    main([f"ckpt={tiny_ckpt}", "what=confusion", "limit=10", f"out={tmp_path}/cm.png", "data=imagenet",
          f"data.root={cifar10_slice}", "data.val_dir=test", "data.num_classes=10", "data.num_workers=0",
          "eval.resize=32", "eval.crop=32"])
    rows = list(csv.reader((tmp_path / "cm.csv").open()))[1:]
    assert [sum(map(int, r[1:])) for r in rows] == [1] * 10
