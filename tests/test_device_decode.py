"""data=imagenet_gpu's path on the CPU: workers read bytes and draw crops, the batch is decoded with
torchvision.io.decode_jpeg and cut where the model runs. Against the PIL path on real Imagenette JPEGs and on odd files
made here, every augment preset and eval protocol through it, unreadable files as the image-folder loader handles
them, the model's dtype and memory format in a real run."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATASETS, compose_run, config_names, run_train
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image
from test_imagenet import SYNSETS, add_unreadable_pair, readable_batches, small_preset, write_tiny_imagenet

from cnnlab.data import Augment, ImageFolderDataModule
from cnnlab.data import device_decode as dd
from cnnlab.data.device_decode import DeviceDecodeDataModule, collate, seeded
from cnnlab.data.images import open_rgb
from cnnlab.evaluation import EvalProtocol

IMAGENETTE = DATASETS / "imagenette2-224"
GREY = "train/n02102040/n02102040_1408.JPEG"  # one of Imagenette's 242 greyscale JPEGs (173 train, 69 val)
# The CPU path against PIL, in levels of 255. Measured on 200 Imagenette JPEGs: decoding bit-identical (both
# libjpeg-turbo); training crops mean |diff| 0.026-0.030, 99.5% of pixels within 1 level, the rest at the crop's
# edges (up to 59), where PIL's box resize also reads source pixels just outside the box; eval views identical.
MEAN_TOL, FAR_FRACTION = 0.1, 0.01  # mean |diff|; fraction of pixels more than 1 level apart


@pytest.fixture
def tiny(tmp_path) -> Path:
    write_tiny_imagenet(tmp_path / "imagenet")
    return tmp_path / "imagenet"


def module(root: Path, augment: Augment | None = None, protocol: EvalProtocol | None = None, num_classes: int = 3,
           **kw) -> DeviceDecodeDataModule:
    data = DeviceDecodeDataModule(str(root), num_classes=num_classes, num_workers=0, augment=augment,
                                  evaluation=protocol, **kw)
    data.setup()
    return data


def device_and_pil(data: DeviceDecodeDataModule, files: list[Path], protocol: EvalProtocol | None = None):
    """Both paths on the same files and per-image seeds: (device-path uint8 views, PIL-path views, EncodedBatch)."""
    split = "train" if protocol is None else "val"
    loader = data._encoded(split, protocol, 8)
    ds = loader.dataset
    keys = [(ds.files.index(f), None, (7, 0, k)) for k, f in enumerate(files)]
    x, y, unreadable = collate([ds[k] for k in keys], data.augment, protocol)
    assert not unreadable
    views, _ = data.decoded_views(*data.transfer_batch_to_device((x, y), torch.device("cpu"), 0))
    ref = []
    for (_, _, seed), f in zip(keys, files, strict=True):
        with seeded(seed):  # the image-folder path under the same per-image seed
            ref.append(data.augment.image(open_rgb(f)) if protocol is None else protocol.views(open_rgb(f)))
    return views, ref, x


def errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, int]:
    """(mean |a - b|, fraction of pixels more than 1 level apart, max |a - b|) in levels of 255."""
    e = (a.int() - b.int()).abs()
    return e.float().mean().item(), (e > 1).float().mean().item(), e.max().item()


@pytest.mark.parametrize("preset", ["inception", "resnet"])
def test_real_imagenette_crops_equal_the_pil_paths(preset):
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"Imagenette is not at {IMAGENETTE}")
    augment = Augment(crop="resized") if preset == "inception" else Augment(crop="shorter_side")
    data = module(IMAGENETTE, augment, num_classes=10)
    files, _ = data.splits["train"]
    picked = [files[i] for i in np.linspace(0, len(files) - 1, 11).astype(int)] + [IMAGENETTE / GREY]
    views, ref, batch = device_and_pil(data, picked)
    assert batch.reasons == {"greyscale": 1} and len(batch.lengths) == 11  # the greyscale one: the CPU decoder
    assert torch.equal(views[-1], ref[-1])  # ... which is the PIL path itself
    mean, far, _ = errors(views, torch.stack(ref))
    assert mean < MEAN_TOL and far < FAR_FRACTION, (mean, far)
    assert views.dtype == torch.uint8 and views.shape == (12, 3, 224, 224)


def test_odd_files_take_the_cpu_decoder_and_equal_the_pil_path(tmp_path):
    root = tmp_path / "odd"
    (root / "train" / "a").mkdir(parents=True)
    (root / "val" / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    px = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    d = root / "train" / "a"
    Image.fromarray(px).save(d / "plain.JPEG", quality=90)
    Image.fromarray(px).save(d / "progressive.JPEG", quality=90, progressive=True)
    Image.fromarray(px).convert("CMYK").save(d / "cmyk.JPEG", quality=90)
    Image.fromarray(px[..., 0]).save(d / "grey.JPEG", quality=90)
    Image.fromarray(np.dstack([px, px[..., :1]])).save(d / "rgba.PNG")  # a PNG with alpha, as in ImageNet's train
    exif = Image.Exif()
    exif[dd.EXIF_ORIENTATION] = 6  # rotated 90 degrees: a phone photo
    Image.fromarray(px).save(d / "rotated.JPEG", quality=90, exif=exif)
    Image.fromarray(px).save(root / "val" / "a" / "v.JPEG")
    data = module(root, small_preset(), num_classes=1)
    files = sorted(d.iterdir())
    views, ref, batch = device_and_pil(data, files)
    assert batch.reasons == {"CMYK": 1, "greyscale": 1, "progressive": 1, "PNG": 1, "EXIF rotation": 1}
    for k in batch.views_at:  # the CPU decoder's crops are the PIL path's, exactly
        assert torch.equal(views[k], ref[k]), files[k].name
    assert views.shape == (6, 3, 32, 32) and views[batch.views_at].float().std() > 10
    assert dd.plain_jpeg((d / "plain.JPEG").read_bytes()) == (60, 90)
    assert dd.plain_jpeg((d / "plain.JPEG").read_bytes()[:500]) == "truncated"


@pytest.mark.parametrize("name", ["center", "flip", "tencrop", "square", "multiscale", "dense"])
def test_every_eval_protocols_views_equal_the_pil_paths(name):
    if not (IMAGENETTE / "val").is_dir():
        pytest.skip(f"Imagenette is not at {IMAGENETTE}")
    protocol = EvalProtocol("tencrop" if name == "square" else name, 240, 224, scales=(224, 320), flip=False,
                            square=name == "square")
    data = module(IMAGENETTE, protocol=protocol, num_classes=10)
    files, _ = data.splits["val"]
    views, ref, _ = device_and_pil(data, [files[0], files[2000]], protocol)
    ref = protocol.collate([(v, 0) for v in ref])[0]
    pairs = (list(zip(sum(views, []), sum(ref, []), strict=True)) if isinstance(views, list)
             else [(views, ref)])
    for a, b in pairs:
        assert a.shape == b.shape
        assert errors(a, b)[2] <= 1, name  # resizes of the whole image: no box edge


@pytest.mark.parametrize("preset", config_names("augment"))
def test_every_augment_preset_composes_and_runs_a_batch(preset, tiny, tmp_path):
    cfg = compose_run(["data=imagenette_gpu", f"data.root={tiny}", "data.num_classes=3", "data.batch_size=4",
                       "data.num_workers=0", f"augment={preset}"], tmp_path)
    augment = instantiate(cfg.augment)
    if augment.in_memory:  # cifar, none: presets for in-memory data fail naming both, as with data=imagenet
        with pytest.raises(InstantiationException, match="augment.crop must be one of"):
            instantiate(cfg.data, augment=augment, evaluation=None)
        return
    data = instantiate(cfg.data, augment=augment, evaluation=None, _convert_="all")
    data.setup()
    batch = data.transfer_batch_to_device(next(iter(data.train_dataloader())), torch.device("cpu"), 0)
    x, y = data.on_after_batch_transfer(batch, 0)
    assert x.dtype == torch.float32 and x.shape == (4, 3, augment.size_at(0), augment.size_at(0))
    assert y.shape[0] == 4 and torch.isfinite(x).all() and x.std() > 0.1


@pytest.mark.parametrize("protocol", config_names("eval"))
def test_every_eval_protocol_composes_and_runs_a_batch(protocol, tiny, tmp_path):
    cfg = compose_run(["data=imagenette_gpu", f"data.root={tiny}", "data.num_classes=3", "data.eval_batch_size=3",
                       "data.num_workers=0", f"eval={protocol}",
                       *([] if protocol == "none" else ["eval.resize=40", "eval.crop=32", "++eval.scales=[32,48]"])],
                      tmp_path)
    if protocol == "none":
        with pytest.raises(InstantiationException, match="eval=none scores images as stored"):
            instantiate(cfg.data, augment=instantiate(cfg.augment), evaluation=cfg.eval)
        return
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), evaluation=cfg.eval, _convert_="all")
    data.setup()
    batch = data.transfer_batch_to_device(next(iter(data.test_dataloader())), torch.device("cpu"), 0)
    x, y = data.on_after_batch_transfer(batch, 0)
    want = {"center": (3, 3, 32, 32), "flip": (3, 2, 3, 32, 32), "tencrop": (3, 10, 3, 32, 32)}
    if protocol in want:
        assert x.shape == want[protocol] and x.dtype == torch.float32
    else:  # a list per view (scale, and mirror image with flip) of differently shaped images
        assert len(x) == (4 if cfg.eval.flip else 2) and min(x[0][0].shape[1:]) == 32
    assert y.tolist() == data.splits["val"][1][:3] == [0, 1, 2]  # val (2 images per class) read classes in turn


def test_unreadable_files_are_handled_as_the_image_folder_loader_handles_them(tiny, caplog):
    bad = add_unreadable_pair(tiny)
    args = {"num_classes": 3, "batch_size": 3, "eval_batch_size": 2, "num_workers": 0, "augment": small_preset(),
            "evaluation": EvalProtocol("center", 40, 32)}
    pil, dev = ImageFolderDataModule(str(tiny), **args), DeviceDecodeDataModule(str(tiny), **args)
    for data in (pil, dev):
        data.setup()
    with caplog.at_level(logging.INFO):
        labels = {d: [torch.cat([y for _, y in d.train_dataloader()]).tolist() for _ in range(2)] for d in (pil, dev)}
        # training: the truncated file replaced by the next readable one, the same substitutes and labels
        assert labels[dev] == labels[pil] and len(labels[dev][0]) == 21
        test = {d: [y.tolist() for _, y in d.test_dataloader()] for d in (pil, dev)}
    # evaluation: the batch of two bad files left out, the rest in the image-folder loader's order
    assert test[dev] == test[pil] == readable_batches(pil, 2, bad) and len(test[pil]) == 3
    assert dev.unreadable == pil.unreadable == {str(tiny / "train" / SYNSETS[0] / "truncated.JPEG"), *bad}
    # the CPU decoder's share, once per pass: the greyscale and the CMYK file of class 0
    assert dev.cpu_decoded["train"] == {"greyscale": 1, "CMYK": 1}
    assert caplog.text.count("train: 2 of 21 images decoded on the CPU (") == 2  # two epochs, one line each


def test_a_file_the_device_decoder_rejects_is_decoded_on_the_cpu(tiny, monkeypatch, caplog):
    data = module(tiny, small_preset(flip=False))
    reject = len((tiny / "train" / SYNSETS[1] / f"{SYNSETS[1]}_2.JPEG").read_bytes())
    real = dd.decode_jpeg

    def decode_jpeg(data, **kw):
        if isinstance(data, list):
            return [decode_jpeg(d, **kw) for d in data]
        if len(data) == reject:
            raise RuntimeError("nvjpeg: bad data")
        return real(data, **kw)

    monkeypatch.setattr(dd, "decode_jpeg", decode_jpeg)
    files = [tiny / "train" / SYNSETS[c] / f"{SYNSETS[c]}_2.JPEG" for c in range(3)]
    with caplog.at_level(logging.WARNING):
        views, ref, _ = device_and_pil(data, files)
    assert torch.equal(views[1], ref[1]) and data.cpu_decoded["train"] == {dd.DEVICE_FAILED: 1}
    assert "the device decoder rejected it" in caplog.text


def test_a_real_run_feeds_the_model_its_dtype_and_memory_format(tiny, tmp_path, monkeypatch):
    from cnnlab.module import ClassifierModule

    seen = []
    step = ClassifierModule._step

    def probe(self, batch, stage):
        seen.append((stage, batch[0].dtype, batch[0].is_contiguous(memory_format=torch.channels_last)))
        return step(self, batch, stage)

    monkeypatch.setattr(ClassifierModule, "_step", probe)
    run_train(["data=imagenette_gpu", f"data.root={tiny}", "data.num_classes=3", "data.batch_size=4",
               "data.num_workers=1", "augment=inception", "augment.size=32", "eval.resize=36", "eval.crop=32",
               "model=resnet18", "model.widths=[8,8,16,16]", "module.channels_last=true",
               "trainer.precision=bf16-true", "trainer.accelerator=cpu", "trainer.max_steps=2",
               "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
               "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    assert {s for s, _, _ in seen} == {"train", "test"}  # max_steps=2 ends the epoch before validation
    assert all(dtype == torch.bfloat16 and cl for _, dtype, cl in seen), seen


def test_gpu_decode_benchmark_runs_in_smoke_mode_on_the_cpu(tiny):
    """benchmarks/gpu_decode.py's code paths (loader alone, train.py fed by it and on synthetic data) on a CPU, so the
    GPU item cannot rot before a GPU shows up."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_decode

    res = gpu_decode.measure(tiny, workers=(1,), batch=4, seconds=0.2, train_workers=1, smoke=True)
    assert res["device"] == "cpu" and res["loader"][0]["img_s"] > 0 and res["loader"][0]["shape"] == [4, 3, 32, 32]
    assert [r["case"] for r in res["train"]] == ["synthetic", "imagenette_gpu, 1 workers"]
    assert all(r.get("img_s", 0) > 0 for r in res["train"]), res["train"]
    assert res["fed_over_synthetic"] > 0
