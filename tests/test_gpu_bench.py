"""The GPU benchmark's pieces on the CPU: the lossless dataset packer (and the CIFAR reader's hook for it), and
benchmarks/gpu.py end to end in smoke mode, so the one command a GPU holder runs cannot rot before a GPU shows up."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.data import DatasetNotFoundError, InMemoryDataModule
from cnnlab.data.pack import pack, read_packed, unpack
from cnnlab.data.readers import read_image_folder

ROOT = Path(__file__).resolve().parents[1]


def test_packed_cifar_reads_exactly_as_the_folder(cifar10_slice, tmp_path):
    out = tmp_path / "cifar.npz"
    stats = pack(cifar10_slice, out, "cifar10")
    assert stats["images"] == 300 and stats["prefix_bytes"] > 500  # the JPEG header the encoder repeats
    assert stats["packed_bytes"] < 0.5 * stats["source_bytes"]  # CIFAR-10 in full: 52.7 MiB of files -> 19.4 MiB
    for train in (True, False):
        folder = read_image_folder(cifar10_slice / ("train" if train else "test"), 32, 3, tmp_path / "cache")
        packed = read_packed(out, train, 32)
        assert torch.equal(packed.x, folder.x) and torch.equal(packed.y, folder.y)
        assert packed.classes == folder.classes
    data = InMemoryDataModule("cifar10", root=str(out), cache_dir=str(tmp_path / "cache"))  # data.root=<file>
    data.setup()
    assert len(data.splits["train"].y) == 200 and len(data.splits["test"].y) == 100


def test_pack_per_class_and_unpack_round_trip(cifar10_slice, tmp_path):
    out = tmp_path / "small.npz"
    assert pack(cifar10_slice, out, "cifar10", per_class=3)["images"] == 60  # 3 x 10 classes x 2 splits
    back = unpack(out, tmp_path / "back")
    files = sorted(p.relative_to(back) for p in back.rglob("*.jpg"))
    assert len(files) == 60 and files[0] == Path("test/airplane/0000.jpg")
    for f in files:
        assert (back / f).read_bytes() == (cifar10_slice / f).read_bytes()


def test_pack_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="must hold train/<class>/\\* and test/ or val/"):
        pack(tmp_path / "only", tmp_path / "x.npz", "x")
    bogus = tmp_path / "bogus.npz"
    torch.save({"x": 1}, bogus)
    with pytest.raises((DatasetNotFoundError, ValueError, OSError)):
        read_packed(bogus, True, 32)


@pytest.fixture
def gpu_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu

    yield gpu
    sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture
def packed(cifar10_slice, tmp_path) -> dict[str, Path]:
    """The two packed files `bash benchmarks/gpu.sh --prepare` makes, from a few real images of each class."""
    files = {"cifar": tmp_path / "cifar.npz", "imagenette": tmp_path / "imagenette.npz"}
    pack(cifar10_slice, files["cifar"], "cifar10", per_class=10)  # 100 train + 100 test images
    imagenette = tmp_path / "imagenette-slice"  # per test: two tests of a session each make their own
    for split in ("train", "val"):  # the loader item reads an ImageNet layout: CIFAR's JPEGs serve as its images
        for c in sorted((cifar10_slice / "test").iterdir()):
            (imagenette / split / c.name).mkdir(parents=True)
            for f in sorted(c.iterdir())[:4]:
                (imagenette / split / c.name / f.name).symlink_to(f)
    pack(imagenette, files["imagenette"], "imagenette")
    return files


@pytest.mark.slow  # about 25 s: every benchmark item, shortened
def test_gpu_benchmark_smoke_runs_every_item_end_to_end(gpu_bench, packed, tmp_path):
    """`python benchmarks/gpu.py OUT --smoke --in-process`: every item's code path on tiny sizes; ~30 s of CPU."""
    out = tmp_path / "out"
    gpu_bench.main([str(out), "--smoke", "--in-process", "--cifar", str(packed["cifar"]),
                    "--imagenette", str(packed["imagenette"])])
    res = json.loads((out / "gpu.json").read_text())
    r50 = res["items"]["1"]["rows"][0]
    assert r50["plain"]["rate"] > 0 and r50["train.py"]["rate"] > 0 and r50["ratio"] > 0
    assert r50["plain"]["macs"] == pytest.approx(4.089e9 * (32 / 224) ** 2, rel=0.15)  # ResNet-50 at 32 px
    fast = res["items"]["2"]["runs"][0]
    assert 0 <= fast["test_acc"] <= 1 and fast["epochs"] == 1
    assert fast["train_s"] > 0 and fast["val_s"] > 0 and fast["test_s"] > 0 and fast["other_s"] > -0.5
    assert res["items"]["1"]["sync_debug"]["result"] == "not a GPU: nothing to check"  # ran; checks on a GPU
    assert res["items"]["3"]["rates"][0]["it_s"] > 0
    assert res["items"]["4"]["rows"][0]["img_s"] > 0 and res["items"]["4"]["images"] == 40
    no_ffcv = [] if importlib.util.find_spec("ffcv") else ["FFCV loader"]  # `pip install -e '.[dev]'`: no FFCV extra
    # in-process: no concurrent runs; items run in the order 1, 3, 5, 2, 4
    assert [s["what"] for s in res["skipped"]] == ["runs sharing the GPU", *no_ffcv]
    assert res["items"]["5"]["fused"]["2"]["it_per_s"] > 0  # benchmarks/fused.py: 2 fused ResNet-8 jobs on the CPU
    md = (out / "gpu.md").read_text()
    for head in ("## 1. ResNet-50", "## 2. experiment=cifar10_fast", "## 3. experiment=he2016_cifar", "## 4. Loaders"):
        assert head in md
    assert "set_sync_debug_mode('error')" in md


def test_gpu_benchmark_out_of_time_skips_with_messages_and_still_writes(gpu_bench, tmp_path):
    gpu_bench.main([str(tmp_path), "--deadline", "3", "--items", "1", "3", "--cifar", str(tmp_path / "none.npz")])
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert len(res["items"]["1"]["rows"]) == 0 and len(res["items"]["3"]["rates"]) == 0
    skipped = [s["what"] for s in res["skipped"]]
    assert "ResNet-50 bf16-mixed CL compile" in skipped and "ResNet-110 max-autotune" in skipped
    assert "ResNet-56 reduce-overhead" in skipped and "ResNet-50 sync debug" not in skipped  # after the first case
    assert all("s of the item's budget left" in s["why"] for s in res["skipped"])
    assert "## Skipped" in (tmp_path / "gpu.md").read_text()


def test_gpu_benchmark_arithmetic(gpu_bench):
    # two runs sharing a GPU, marked (step, time): 10 it/s and 20 it/s over the common window [1, 3]
    a, b = [[0, 0.0], [10, 1.0], [40, 4.0]], [[0, 1.0], [20, 2.0], [60, 4.0]]
    assert gpu_bench.steps_between(a, 1.0, 3.0) == pytest.approx(20) and gpu_bench.steps_between(b, 1.0, 3.0) == 40
    assert gpu_bench.rate(a, 128) == pytest.approx(1280)
    # cifar10_fast phases: a first epoch 3 s longer (compile), first validation 1 s longer
    d = {"t0": 0.0, "fit_start": 5.0, "wall_s": 30.0, "train": [[5, 9], [9.5, 10.5], [11, 12]],
         "val": [[9, 10.1], [10.5, 10.6], [12, 12.1]], "test": [[12.5, 13]], "results": {"test": {"test/err1": 0.06}}}
    p = gpu_bench.Bench.phases(0, d)
    assert p["startup_s"] == 5 and p["train_s"] == pytest.approx(3) and p["compile_s"] == pytest.approx(3 + 1)
    assert p["test_acc"] == pytest.approx(0.94) and p["test_s"] == pytest.approx(0.5)
    # Figure 6: 6 runs at each depth 20/32/44/56 x 64k steps; 10 and 25 ms per step at 20 and 56, 32/44 interpolated
    he = {"rates": [{"depth": 20, "compile": False, "it_s": 100.0}, {"depth": 56, "compile": False, "it_s": 40.0}],
          "sharing": [{"runs": 4, "aggregate_it_s": 120.0}]}
    gpu_bench.Bench.sweep(he)
    assert he["sweep"][0]["one_gpu_h"] == pytest.approx(6 * 64000 * (0.010 + 0.015 + 0.020 + 0.025) / 3600)
    assert he["sweep"][0]["shared_h"] == pytest.approx(he["sweep"][0]["one_gpu_h"] / 3)  # 120 it/s vs 40
    # with 110 (extrapolated: 10 + 90 x 15/36 ms) x 6 runs
    assert he["sweep"][0]["study_h"] == pytest.approx(he["sweep"][0]["one_gpu_h"] + 6 * 64000 * 0.0475 / 3600)
    # a compile mode's own rates give its own line
    rates = ((20, False, 100.0), (56, False, 40.0), (20, "default", 200.0), (56, "default", 80.0))
    he = {"rates": [{"depth": d, "compile": m, "it_s": r} for d, m, r in rates], "sharing": []}
    gpu_bench.Bench.sweep(he)
    assert [s["compile"] for s in he["sweep"]] == [False, "default"]
    assert he["sweep"][1]["one_gpu_h"] == pytest.approx(he["sweep"][0]["one_gpu_h"] / 2)


@pytest.mark.slow
def test_gpu_sh_smoke_as_the_gpu_holder_runs_it(packed, tmp_path):
    """The wrapper with every run in its own process (train.py as a user runs it, the sharing runs at once)."""
    subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path / "out"), "--smoke", "--cifar", str(packed["cifar"]),
                    "--imagenette", str(packed["imagenette"])], cwd=ROOT, check=True, timeout=1200)
    res = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert res["items"]["1"]["rows"][0]["train.py"]["rate"] > 0 and res["items"]["2"]["runs"][0]["test_acc"] >= 0
    assert res["items"]["3"]["sharing"][0]["runs"] == 2 and not res["skipped"]


def test_loaders_benchmark_skips_a_missing_backend_and_reports_the_real_loader(cifar10_slice, tmp_path, monkeypatch,
                                                                               capsys, gpu_bench):
    import loaders

    monkeypatch.setitem(sys.modules, "ffcv", None)  # as after `pip install -e '.[dev]'`: no FFCV extra
    monkeypatch.setattr(sys, "argv", ["loaders.py", "--root", str(cifar10_slice), "--images", "24", "--repeats", "1",
                                      "--paths", "pil", "imagefolder", "ffcv", "--json", str(tmp_path / "l.json")])
    loaders.main()
    assert "ffcv         skipped: ffcv is not installed" in capsys.readouterr().out
    rates = json.loads((tmp_path / "l.json").read_text())["rates"]
    assert set(rates) == {"pil", "imagefolder"} and all(r > 0 for r in rates.values())
