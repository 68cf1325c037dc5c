"""cnnlab.predict on checkpoints of tiny real runs (CIFAR-10 JPEGs, MNIST, Imagenette): the checkpoint's own eval
preprocessing for images of any size and mode, top-5 names and probabilities, the annotated PNG, clear errors."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATASETS, run_train
from hydra.utils import instantiate
from PIL import Image

from cnnlab.predict import load, main, predict, read_image

QUICK = ["trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
         "callbacks.progress_bar.refresh_rate=0", "trainer.log_every_n_steps=1"]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def printed_top5(out: str) -> list[list[tuple[str, float]]]:
    """Per image block of the output, its (name, probability) lines."""
    blocks = []
    for line in out.splitlines():
        if m := re.match(r"\s+\d\. (.+?)\s+([\d.]+)%$", line):
            blocks[-1].append((m[1], float(m[2]) / 100))
        elif not line.startswith(" ") and Path(line).suffix in (".jpg", ".png", ".JPEG"):  # the image's path
            blocks.append([])
    return blocks


def test_cifar10_checkpoint_top5_any_image_mode_and_annotated_png(cifar10_slice, tmp_path, capsys):
    run_train([f"data.root={cifar10_slice}", f"data.cache_dir={tmp_path}/cache", "data.batch_size=50",
               "data.val_split=0", *QUICK],
              tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    images = tmp_path / "images"
    images.mkdir()
    jpg = sorted((cifar10_slice / "test" / "cat").iterdir())[0]
    (images / "cat.jpg").symlink_to(jpg)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 100), np.uint8), "L").save(images / "grey.png")
    Image.new("CMYK", (90, 70), (0, 120, 200, 10)).save(images / "cmyk.jpg")

    capsys.readouterr()
    main([f"ckpt={ckpt}", f"image={images}", f"save={tmp_path}/png"])
    blocks = printed_top5(capsys.readouterr().out)
    assert len(blocks) == 3
    for top in blocks:
        names, probs = zip(*top, strict=True)
        assert len(top) == 5 and set(names) <= set(CIFAR10) and list(probs) == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1.001
    for name in ("cat", "grey", "cmyk"):
        png = np.asarray(Image.open(tmp_path / "png" / f"{name}.png").convert("RGB"))
        assert png.shape[0] > 300 and png.shape[1] > 600 and png.std() > 10  # a real figure, not a blank canvas

    # predict preprocesses exactly as the test stage did: same input tensor, same probabilities as the module's
    ck = load(ckpt)
    data = instantiate(ck.cfg.data, _convert_="all")
    data.setup("test")
    index = data.splits["test"].y.tolist().index(CIFAR10.index("cat"))  # the first "cat" file by name
    expected = data.normalize(data.splits["test"].x[index : index + 1])[0]
    x = ck.preprocess(read_image(jpg))
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        probs = ck.model(expected[None]).softmax(-1)[0]
    name, p = predict(ck, [read_image(jpg)])[0][0]
    assert name == CIFAR10[int(probs.argmax())] and p == pytest.approx(float(probs.max()), abs=1e-6)


def test_mnist_checkpoint_reads_any_image_as_padded_greyscale(tmp_path, capsys):
    root = DATASETS / "mnist"
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST is not at {root}")
    run_train(["data=mnist", f"data.root={root}", "model=lenet5", "augment=none", "data.batch_size=64",
               "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
               *QUICK], tmp_path / "run")
    ck = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    data = instantiate(ck.cfg.data, _convert_="all")
    data.setup("test")
    digit = data.splits["test"].x[0, :, 2:-2, 2:-2]  # 1 x 28 x 28 as stored in the idx file (unpadded)
    Image.fromarray(digit[0].numpy(), "L").save(tmp_path / "digit.png")
    x = ck.preprocess(read_image(tmp_path / "digit.png"))
    torch.testing.assert_close(x, data.normalize(data.splits["test"].x[:1])[0], atol=1e-6, rtol=0)

    Image.new("RGB", (100, 80), (255, 255, 255)).save(tmp_path / "white.jpg")  # any size, colour
    x = ck.preprocess(read_image(tmp_path / "white.jpg"))
    assert x.shape == (1, 32, 32)  # greyscale, 28x28 + LeNet-5's 2-pixel zero border
    assert x[0, 0, 0] == pytest.approx((0 - 0.1307) / 0.3081, abs=1e-4)
    assert x[0, 16, 16] == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-2)
    capsys.readouterr()
    main([f"ckpt={tmp_path}/run/checkpoints/last.ckpt", f"image={tmp_path}/white.jpg", f"save={tmp_path}/w.png"])
    (top,) = printed_top5(capsys.readouterr().out)
    assert len(top) == 5 and all(n in data.classes for n, _ in top)  # "0 - zero", ...
    assert (tmp_path / "w.png").is_file()


def test_imagenette_checkpoint_uses_its_eval_crop_and_human_class_names(tmp_path, capsys):
    root = DATASETS / "imagenette2-224"
    if not (root / "val").is_dir():
        pytest.skip(f"Imagenette is not at {root}")
    run_train(["data=imagenette", f"data.root={root}", "data.per_class=1", "data.batch_size=10",
               "data.num_workers=1", "augment.size=32", "augment.shorter_side=[36,48]", "eval.resize=36",
               "eval.crop=32", "model=resnet20", *QUICK], tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = load(ckpt)
    jpg = sorted((root / "val" / "n01440764").iterdir())[0]
    assert ck.preprocess(read_image(jpg)).shape == (3, 32, 32) and ck.input_shape() == (3, 32, 32)
    capsys.readouterr()
    main([f"ckpt={ckpt}", f"image={jpg}"])
    (top,) = printed_top5(capsys.readouterr().out)
    assert "tench" in ck.classes and {n for n, _ in top} <= set(ck.classes) and len(top) == 5


@pytest.fixture(scope="module")
def synthetic_ckpt(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("synthetic")
    run_train(["data=synthetic", "data.synthetic_size=[32,16]", "data.batch_size=16", *QUICK], run)
    return run / "checkpoints" / "last.ckpt"


def test_bad_checkpoint_image_or_override_fails_clearly(synthetic_ckpt, tmp_path, capsys):
    ckpt = synthetic_ckpt
    with pytest.raises(ValueError, match=r"does not fit this model(.|\n)*missing from the checkpoint: layer1.3"):
        load(ckpt, ["model.depths=[5,5,5]"])
    with pytest.raises(Exception, match="no_such_key"):
        load(ckpt, ["data.no_such_key=1"])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt is not a cnnlab checkpoint"):
        load(tmp_path / "plain.pt")
    with pytest.raises(SystemExit, match="no image file or folder at image=.*missing.jpg"):  # the message alone
        main([f"ckpt={ckpt}", f"image={tmp_path}/missing.jpg"])
    with pytest.raises(SystemExit, match=r"ckpt=.*none.ckpt: no such file"):
        main([f"ckpt={tmp_path}/none.ckpt", f"image={tmp_path}"])
    with pytest.raises(SystemExit, match=r"usage: python -m cnnlab.predict ckpt=<checkpoint>"):
        main([f"image={tmp_path}"])
    with pytest.raises(SystemExit, match="Could not override 'top_k'"):  # Hydra's grammar, as in train.py
        main([f"ckpt={ckpt}", f"image={tmp_path}", "top_k=3"])


def test_folder_output_mirrors_subfolders(synthetic_ckpt, tmp_path, capsys):
    """Two images of one name in different class folders get two PNGs; a folder's images are printed in sorted path
    order (a listing of every file, unlike the class-interleaved order of the debug subsets)."""
    for cls, names in (("b", ("0.png",)), ("a", ("1.png", "0.png"))):  # created out of order
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "imgs" / cls / name)
    main([f"ckpt={synthetic_ckpt}", f"image={tmp_path}/imgs", f"save={tmp_path}/out"])
    out = capsys.readouterr().out
    assert len(printed_top5(out)) == 3
    assert [line for line in out.splitlines() if line.startswith(str(tmp_path))] == [
        f"{tmp_path}/imgs/{f}" for f in ("a/0.png", "a/1.png", "b/0.png")]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a/0.png", "a/1.png", "b/0.png"]


def test_checkpoints_from_before_transfer_weights_still_load(synthetic_ckpt, tmp_path):
    """Run configs saved while model configs carried `pretrained:`: the key is dropped, the model builds."""
    state = torch.load(synthetic_ckpt, weights_only=True)
    state["hyper_parameters"]["run_config"]["model"]["pretrained"] = None
    torch.save(state, tmp_path / "old.ckpt")
    ck = load(tmp_path / "old.ckpt")
    assert "pretrained" not in ck.cfg.model
    x = torch.randn(2, *ck.input_shape())
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), load(synthetic_ckpt).model(x))
