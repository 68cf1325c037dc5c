"""The papers' claims on one GPU (benchmarks/claims.sh) on the CPU: every code path in smoke mode, and the verdicts'
arithmetic; and airbench94's recipe steps of experiment=cifar10_fast, one test each, with the defaults unchanged."""

import json
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import compose_run, run_train

from cnnlab.data import Augment, InMemoryDataModule
from cnnlab.data.augment import pad_crop_flip
from cnnlab.evaluation import EvalProtocol
from cnnlab.lookahead import DecoupledDecay, Lookahead
from cnnlab.models import FastNet
from cnnlab.module import param_groups

ROOT = Path(__file__).resolve().parents[1]


# ---- airbench94's steps in experiment=cifar10_fast ------------------------------------------------------------------
def test_cifar10_fast_turns_every_airbench_step_on(tmp_path):
    cfg = compose_run(["experiment=cifar10_fast"], tmp_path)
    assert cfg.callbacks.lookahead.every_n_steps == 5 and "ema" not in cfg.callbacks
    assert cfg.callbacks.whitening.images == 5000 and cfg.callbacks.whitening.bias_epochs == 3
    assert cfg.augment.flip_mode == "alternate" and cfg.augment.padding_mode == "reflect"
    assert cfg.eval.translate == 1 and cfg.eval.flip and cfg.data.drop_last and cfg.module.norm_bias_decay
    base = compose_run(["data=cifar10"], tmp_path / "base")  # everyone else keeps the old behaviour
    assert "flip_mode" not in base.augment and "translate" not in base.eval and "drop_last" not in base.data


def alternating_module(n: int = 64) -> InMemoryDataModule:
    dm = InMemoryDataModule("synthetic", synthetic_size=(n, 8), batch_size=16, seed=3, normalize="channel",
                            augment=Augment(crop="none", flip=True, flip_mode="alternate"))
    dm.setup()
    dm.splits["train"].y = torch.arange(n)  # labels name the images
    return dm


def test_alternating_flips_mirror_each_image_in_exactly_one_of_two_consecutive_epochs():
    dm = alternating_module()
    x = dm.normalize(dm.splits["train"].x)
    loader = dm.train_dataloader()
    flipped = []
    for epoch in range(3):
        loader.position = lambda e=epoch: (e, 0)
        seen = torch.zeros(len(x), dtype=torch.bool)
        for xb, yb in loader:
            for img, i in zip(xb, yb, strict=True):
                same, mirror = torch.equal(img, x[i]), torch.equal(img, x[i].flip(-1))
                assert same != mirror  # synthetic noise is never symmetric
                seen[i] = mirror
        flipped.append(seen)
    assert torch.equal(flipped[0], ~flipped[1]) and torch.equal(flipped[0], flipped[2])
    assert 16 < flipped[0].sum() < 48  # the first epoch's half is random
    random = InMemoryDataModule("synthetic", synthetic_size=(64, 8), augment=Augment(crop="none", flip=True))
    random.setup()
    assert random.train_dataloader().epoch_images is None  # the default: flips per batch


def test_reflect_padding_mirrors_the_border_and_zeros_stay_the_default():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4).expand(200, 1, 4, 4).contiguous()
    g = torch.Generator().manual_seed(0)
    out = pad_crop_flip(x, 2, False, g, reflect=True)
    padded = torch.nn.functional.pad(x.float(), (2,) * 4, mode="reflect").to(torch.uint8)[0, 0]
    crops = {(dy, dx): padded[dy : dy + 4, dx : dx + 4] for dy in range(5) for dx in range(5)}
    shifts = {next(k for k, c in crops.items() if torch.equal(o[0], c)) for o in out}
    assert len(shifts) == 25 and (out > 0).all()  # every translate drawn; reflection never brings in a zero
    assert torch.equal(crops[(0, 0)][0], torch.tensor([11, 10, 9, 10], dtype=torch.uint8))  # row 2 then row 1 ...
    zeros = pad_crop_flip(x, 2, False, torch.Generator().manual_seed(0))
    assert (zeros == 0).any()  # same draws, He et al.'s zero padding
    same = Augment(crop="pad", crop_padding=2, flip=True).batch(x, x[:, 0, 0, 0].long(), torch.zeros(1, 1, 1),
                                                               torch.ones(1, 1, 1), 16,
                                                               torch.Generator().manual_seed(1))[0]
    ref = pad_crop_flip(x, 2, True, torch.Generator().manual_seed(1)).float() / 255
    assert torch.equal(same, ref)


def test_tta_translate_scores_six_views_and_flip_alone_stays_two():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    v = EvalProtocol("flip", translate=1).tensor_views(x)
    assert v.shape == (3, 6, 3, 8, 8) and torch.equal(v[:, 0], x) and torch.equal(v[:, 1], x.flip(-1))
    up_left, down_right = v[:, 2], v[:, 4]  # content moved one pixel down-right / up-left, reflected at the edge
    assert torch.equal(up_left[..., 1:, 1:], x[..., :-1, :-1]) and torch.equal(up_left[..., 0, 0], x[..., 1, 1])
    assert torch.equal(down_right[..., :-1, :-1], x[..., 1:, 1:]) and torch.equal(v[:, 5], down_right.flip(-1))
    assert torch.equal(EvalProtocol("flip").tensor_views(x), torch.stack([x, x.flip(-1)], 1))
    with pytest.raises(ValueError, match="translate=1 with eval=tencrop"):
        EvalProtocol("tencrop", translate=1)


def test_drop_last_gives_only_full_batches():
    for drop, sizes in ((False, [32, 32, 32, 4]), (True, [32, 32, 32])):
        dm = InMemoryDataModule("synthetic", synthetic_size=(100, 8), batch_size=32, drop_last=drop)
        dm.setup()
        assert [len(y) for _, y in dm.train_dataloader()] == sizes
        assert sum(len(y) for _, y in dm.test_dataloader()) == 8  # evaluation counts every image


def test_lookahead_resets_the_network_to_the_average_every_5_steps():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    module = SimpleNamespace(model=net)
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=20)
    la = Lookahead(every_n_steps=5, decay=0.5, power=1.0)
    la.on_train_start(trainer, module)
    prev = net.state_dict()["0.weight"].clone()  # the average so far
    for step in range(1, 11):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)  # an optimizer step
        trainer.global_step = step
        before = {k: v.clone() for k, v in net.state_dict().items()}
        la.on_train_batch_end(trainer, module, None, None, step - 1)
        after = net.state_dict()
        if step % 5:
            assert all(torch.equal(after[k], before[k]) for k in after)
        else:
            decay = 0.5 * step / 20
            w = net[0].weight
            expect = before["0.weight"] * (1 - decay) + decay * prev
            assert torch.allclose(w, expect) and torch.equal(la.average["0.weight"], w)
            prev = w.clone()
    assert net.state_dict()["1.num_batches_tracked"].dtype == torch.int64 and "1.num_batches_tracked" not in la.average
    trainer.global_step = 20  # the last step: the network ends at the average
    la.on_train_batch_end(trainer, module, None, None, 19)
    assert torch.equal(net[0].weight, la.average["0.weight"])


class WhitenProbe(L.Callback):
    """Records the whitening stem at every epoch's end (tests)."""

    seen: list = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        WhitenProbe.seen.append((pl_module.model.stem[0].weight.clone(), pl_module.model.stem[0].bias.clone()))


def test_whitening_from_stored_images_and_bias_frozen_after_its_epochs(tmp_path):
    WhitenProbe.seen = []
    overrides = ["experiment=cifar10_fast", "data=synthetic", "data.synthetic_size=[96,16]", "data.batch_size=32",
                 "trainer.accelerator=cpu", "trainer.precision=32-true", "module.compile=false", "model.widths=[8,8,8]",
                 "trainer.max_epochs=3", "callbacks.whitening.images=64", "callbacks.whitening.bias_epochs=2",
                 "callbacks.progress_bar.refresh_rate=0", "+callbacks.probe._target_=test_claims.WhitenProbe",
                 "~callbacks.lookahead"]  # lookahead off: it averages the stem bias too
    run_train(overrides, tmp_path)
    from hydra.utils import instantiate

    dm = instantiate(compose_run(overrides, tmp_path / "again").data, _convert_="all")
    dm.setup()
    ref = FastNet()
    ref.whiten(dm.normalize(dm.splits["train"].x[:64]))  # the first 64 images as stored, unaugmented
    (w0, b0), (w1, b1), (w2, b2) = WhitenProbe.seen
    assert torch.allclose(w0, ref.stem[0].weight, atol=1e-5) and torch.equal(w0, w2)
    assert not torch.equal(b0, torch.zeros_like(b0)) and not torch.equal(b0, b1)  # trains in epochs 0 and 1
    assert torch.equal(b1, b2)  # frozen from epoch 2 on


def test_decoupled_decay_gives_the_bn_shifts_the_others_per_step_decay():
    net = FastNet(widths=(8, 8, 8), bias_scaler=64.0)
    opt = torch.optim.SGD(param_groups(net, norm_bias_decay=True), lr=0.1, weight_decay=0.01)
    for g in opt.param_groups:
        g["lr"] *= g["lr_scale"]
    cb = DecoupledDecay()
    for _ in range(2):  # a resume calls it again: divided once
        cb.on_train_start(SimpleNamespace(optimizers=[opt]), None)
    assert sorted(g["lr_scale"] for g in opt.param_groups) == [1.0, 64.0]
    assert all(g["lr"] * g["weight_decay"] == pytest.approx(0.1 * 0.01) for g in opt.param_groups)


def test_the_official_python_cifar10_layout_is_read(tmp_path, monkeypatch):
    """data.root=<folder with cifar-10-batches-py> reads torchvision's layout: pickled dicts with the official keys."""
    import torchvision

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 6}
    for name, n in batches.items():
        # the official Python 2 pickles' keys, as pickle.load(encoding="latin1") returns them
        d = {"batch_label": name, "labels": list(range(n)), "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "filenames": [f"{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(d))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    # the md5s torchvision checks are the official files'; a fixture cannot match them, its layout can
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    dm = InMemoryDataModule("cifar10", root=str(tmp_path / "cifar10"), cache_dir=str(tmp_path / "cache"))
    dm.setup()
    first = pickle.loads((folder / "data_batch_1").read_bytes())["data"][0].reshape(3, 32, 32)
    assert len(dm.splits["train"].y) == 20 and len(dm.splits["test"].y) == 6 and dm.classes == names
    assert torch.equal(dm.splits["train"].x[0], torch.from_numpy(first))  # the bytes as stored, channels first
    assert dm.splits["test"].y.tolist() == list(range(6))


# ---- benchmarks/claims.sh ----------------------------------------------------------------------------------------
@pytest.fixture
def claims_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import claims

    yield claims
    sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.slow  # about 40 s: every claim's runs, shortened
def test_claims_smoke_runs_every_claim_and_the_ablation_end_to_end(claims_bench, cifar10_slice, tmp_path):
    """`python benchmarks/claims.py OUT --smoke --in-process`: every claim's runs, 2 steps each, tables and curves."""
    from cnnlab.data.pack import pack

    cifar, inet = tmp_path / "cifar.npz", tmp_path / "imagenette.npz"
    pack(cifar10_slice, cifar, "cifar10", per_class=10)
    folder = tmp_path / "inet"  # an ImageNet layout (train/, val/) made of CIFAR's JPEGs
    for split in ("train", "val"):
        for c in sorted((cifar10_slice / "test").iterdir()):
            (folder / split / c.name).mkdir(parents=True)
            for f in sorted(c.iterdir())[:5]:
                (folder / split / c.name / f.name).symlink_to(f)
    pack(folder, inet, "imagenette")
    out = tmp_path / "out"
    claims_bench.main([str(out), "--smoke", "--in-process", "--cifar", str(cifar), "--imagenette", str(inet)])
    res = json.loads((out / "claims.json").read_text())
    assert res["cifar_pixels"] == "JPEG copy, not the official pixels"
    for claim, c in claims_bench.CLAIMS.items():
        got = res["claims"][claim]
        assert "error" not in got, got.get("error")
        assert all(r["test_err"] is not None and r["curve"] for r in got["runs"]), claim
        assert {r["label"] for r in got["runs"]} >= set(c["models"])
        assert (out / "curves" / f"{claim}.csv").read_text().count("\n") > len(got["runs"])
    assert len(res["claims"]["fast"]["ablation"]) == 1 + len(claims_bench.ABLATIONS)
    md = (out / "claims.md").read_text()
    assert md.count("| Deeper plain nets train worse") == 2 and "error falls with cardinality" in md
    assert "JPEG copy, not the official pixels" in md and "## cifar10_fast ablation" in md


def test_claims_verdicts_need_the_seed_ranges_apart(claims_bench):
    run = lambda label, seed, tr, te: {"label": label, "seed": seed, "train_err": tr, "test_err": te}  # noqa: E731
    by = {"plain20": [run("plain20", s, 0.10 + s / 100, 0.12) for s in range(3)],
          "plain56": [run("plain56", s, 0.20 + s / 100, 0.20) for s in range(3)],
          "resnet20": [run("resnet20", s, 0.08 + s / 100, 0.10 + s / 100) for s in range(3)],
          "resnet56": [run("resnet56", s, 0.05 + s / 100, 0.095 + s / 100) for s in range(3)]}
    plain, res = claims_bench.verdicts("fig6", by)
    assert plain["shown"] and "11.00 ± 1.00% (10.00-12.00, n=3)" in plain["ours"]
    assert not res["shown"]  # test ranges 9.5-11.5 and 10-12 overlap: not shown, with its numbers
    ms = claims_bench.CLAIMS["cardinality"]["models"]
    falling = {m: [run(m, s, 0, 0.3 - 0.02 * i + s / 1000) for s in range(3)] for i, m in enumerate(ms)}
    assert claims_bench.verdicts("cardinality", falling)[0]["shown"]
    falling[ms[2]] = [run(ms[2], s, 0, 0.31) for s in range(3)]
    assert not claims_bench.verdicts("cardinality", falling)[0]["shown"]
    fast = {"airbench94": [run("airbench94", s, 0, 0.059) for s in range(4)]}
    assert not claims_bench.verdicts("fast", fast)[0]["shown"]  # 94.1% but n = 4 < 5


def test_claims_out_of_time_lists_runs_not_run(claims_bench, tmp_path):
    claims_bench.main([str(tmp_path), "--deadline", "0", "--items", "fig6", "--cifar", str(tmp_path / "x.npz")])
    res = json.loads((tmp_path / "claims.json").read_text())
    assert len(res["claims"]["fig6"]["not_run"]) == 12 and not res["claims"]["fig6"]["runs"]
    assert "not run (out of time): plain20 seed 0" in (tmp_path / "claims.md").read_text()
