"""cnnlab.report on run directories made by real tiny runs: tables grouped by the swept keys (mean +- std, n),
failed and never-started runs listed, learning curves, Figure 6 / Table 6, Table 3 and the ILSVRC table."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import Interrupted, run_train
from test_sweeps import SMALL, multirun

from cnnlab.report import main, report


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def run_err1(run_dir: Path) -> float:
    return 100 * json.loads((run_dir / "results.json").read_text())["test"]["test/err1"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Path:
    """A real 4-job multirun (plain-20 and ResNet-20, seeds 0 and 1) and, beside it, a run that crashed at step 3."""
    root = tmp_path_factory.mktemp("sweeps")
    multirun(["experiment=he2016_degradation_small", "model=plain20,resnet20", "seed=0,1", *SMALL], root / "grid")
    with pytest.raises(Interrupted):
        run_train(["experiment=he2016_degradation_small", "model=plain20", *SMALL,
                   "+callbacks.crash._target_=conftest.InterruptAt", "+callbacks.crash.step=3"], root / "crashed")
    return root


def test_sweep_report_groups_by_swept_keys_with_mean_std_and_lists_the_failed_run(sweeps, tmp_path):
    text = report([sweeps], tmp_path)
    summary = {r["model"]: r for r in rows(tmp_path / "summary.csv")}
    for model, jobs in (("plain20", ["0", "1"]), ("resnet20", ["2", "3"])):  # Hydra numbers model-major
        errs = [run_err1(sweeps / "grid" / j) for j in jobs]
        mean, std = sum(errs) / 2, abs(errs[0] - errs[1]) / 2**0.5  # the sample std of two values
        assert summary[model]["n"] == "2"
        assert summary[model]["test err1 %"] == f"{mean:.2f} ± {std:.2f}"
    assert summary["—"]["n"] == "0/1"  # the crashed run, without .hydra/: no model name
    assert "Failed or unfinished (1 of 5)" in text and f"`{sweeps / 'crashed'}`" in text
    assert [r["status"] for r in rows(tmp_path / "runs.csv")].count("failed or unfinished") == 1
    assert (tmp_path / "summary.md").read_text().startswith("## 5 runs")
    for stem in ("curves", "degradation"):
        assert (tmp_path / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    import matplotlib.image

    h, w, _ = matplotlib.image.imread(tmp_path / "degradation.png").shape
    assert w > 2 * h  # plain and residual panels side by side


def test_table6_has_measured_params_and_the_papers_test_error(sweeps, tmp_path):
    report([sweeps / "grid"], tmp_path)
    table = {r["model"]: r for r in rows(tmp_path / "table6.csv")}
    assert list(table) == ["plain20", "resnet20"]
    assert table["resnet20"]["params"] == table["plain20"]["params"] == "269,722"  # option A: no shortcut weights
    assert table["resnet20"]["paper test err %"] == "8.75" and table["plain20"]["paper test err %"] == "—"
    errs = [run_err1(sweeps / "grid" / j) for j in ("2", "3")]
    assert table["resnet20"]["test err %"].startswith(f"{sum(errs) / 2:.2f} ± ")
    assert "He et al. 2016" in (tmp_path / "table6.md").read_text()


def test_jobs_a_sweep_never_started_are_listed(sweeps, tmp_path):
    stopped = tmp_path / "stopped"
    shutil.copytree(sweeps / "grid", stopped)
    shutil.rmtree(stopped / "3")  # as if the sweep was killed before its last job
    text = report([stopped], tmp_path / "out")
    assert f"`{stopped / '3'}`: defined by the sweep, never started" in text
    assert {r["model"]: r["n"] for r in rows(tmp_path / "out" / "summary.csv")} == {"plain20": "2", "resnet20": "1"}


def test_cli_writes_into_out_and_names_a_missing_directory(sweeps, tmp_path, capsys):
    main([str(sweeps / "grid"), "--out", str(tmp_path)])
    assert "| plain20 | 2 |" in capsys.readouterr().out and (tmp_path / "report.md").is_file()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main([str(tmp_path / "nowhere")])



def test_a_run_that_ended_without_training_is_listed_with_its_status(sweeps, tmp_path):
    """A report-only finder run (tune.apply=false) and a diverged run keep results.json's status in runs.csv and the
    list of runs that did not finish, instead of reading as crashed."""
    for name, status in (("tuned", "tuned"), ("diverged", "diverged")):
        shutil.copytree(sweeps / "grid" / "0", tmp_path / "runs" / name)
        (tmp_path / "runs" / name / "results.json").write_text(json.dumps({"status": status, "global_step": 0}))
    text = report([tmp_path / "runs"], tmp_path / "out")
    assert sorted(r["status"] for r in rows(tmp_path / "out" / "runs.csv")) == ["diverged", "tuned"]
    assert "status tuned, last logged step" in text and "status diverged" in text

@pytest.mark.slow  # about 20 s: two ResNeXt-50 runs
def test_resnext_table3_and_ilsvrc_table_from_a_real_sweep(tmp_path):
    multirun(["experiment=resnext50_ablation_small", "model=resnext50_1x64d,resnext50_32x4d", *SMALL,
              "data.synthetic_size=[24,8]", "data.val_split=8", "data.batch_size=8", "trainer.max_epochs=1"],
             tmp_path / "sweep")
    report([tmp_path / "sweep"], tmp_path / "out")
    table3 = {r["model"]: r for r in rows(tmp_path / "out" / "table3.csv")}
    # paper top-1 error: Xie et al. 2017, Table 3
    assert [(r["setting"], r["params"], r["GMACs"], r["paper top-1 err %"]) for r in table3.values()] == [
        ("1 x 64d", "25,557,032", "4.089", "23.9"), ("32 x 4d", "25,028,904", "4.230", "22.2")]
    assert table3["resnext50_32x4d"]["n"] == "1"
    ilsvrc = {r["model"]: r for r in rows(tmp_path / "out" / "ilsvrc.csv")}
    assert list(ilsvrc) == ["resnext50_32x4d"]  # 1x64d is the Table 3 name of ResNet-50, not an ILSVRC entry
    assert ilsvrc["resnext50_32x4d"]["paper 1-crop"] == "22.2/—"
    assert ilsvrc["resnext50_32x4d"]["torchvision 1-crop"] == "22.38/6.30"
    err = run_err1(tmp_path / "sweep" / "1")
    assert ilsvrc["resnext50_32x4d"]["ours none top-1/top-5 %"].startswith(f"{err:.2f}/")
    assert "SuperVision (AlexNet)" in (tmp_path / "out" / "ilsvrc.md").read_text()
    assert (tmp_path / "out" / "ilsvrc_gmacs.png").stat().st_size > 1000
    ckpt = next((tmp_path / "sweep" / "1" / "checkpoints").glob("best-*.ckpt"))
    report([], tmp_path / "ckpt", protocols=("flip",), ckpts=(str(ckpt),))  # named by its run directory's .hydra/
    evaluated = rows(tmp_path / "ckpt" / "ilsvrc.csv")
    assert [r["model"] for r in evaluated] == ["resnext50_32x4d"]
    top1, top5 = map(float, evaluated[0]["ours flip top-1/top-5 %"].split("/"))
    assert 0 <= top5 <= top1 <= 100


@pytest.mark.slow  # about 15 s: two recipes' runs
def test_recipes_table_and_ilsvrc_row_of_the_shortcut_option_from_real_runs(tmp_path):
    multirun(["experiment=lecun1998_mnist,ilsvrc_resnet18", "data=synthetic", "data.synthetic_size=[16,8]",
              "data.batch_size=8", "data.eval_batch_size=8", "module.reference_batch=8", "trainer.max_epochs=1",
              "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0"], tmp_path / "sweep")
    report([tmp_path / "sweep"], tmp_path / "out")
    recipes = {r["model"]: r for r in rows(tmp_path / "out" / "recipes.csv")}
    assert list(recipes) == ["lenet5"]
    lenet = recipes["lenet5"]
    # the model the run built: 3 input channels on the synthetic RGB images (61,706 on MNIST's 1)
    assert (lenet["recipe"], lenet["data"], lenet["params"], lenet["n"]) == ("lecun1998_mnist", "synthetic", "62,006",
                                                                             "1")
    assert lenet["paper test err %"] == "0.95 (mnist)" and "LeCun et al. 1998" in lenet["paper row"]
    assert lenet["test err %"] == f"{run_err1(tmp_path / 'sweep' / '0'):.2f}"
    ilsvrc = {r["model"]: r for r in rows(tmp_path / "out" / "ilsvrc.csv")}
    resnet18 = ilsvrc["resnet18"]  # ilsvrc_resnet18 builds option A: Table 2's row, no torchvision (option B) weights
    assert (resnet18["params"], resnet18["paper 10-crop"], resnet18["torchvision 1-crop"]) == ("11,515,688",
                                                                                              "27.88/—", "—")
    assert "Table 2, 'ResNet 18 layers', option A (10-crop)" in resnet18["paper row"]
