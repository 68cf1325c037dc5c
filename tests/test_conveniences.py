"""The conveniences of lightning-hydra-template and timm users: debug=, paths, tags, callbacks= presets,
ckpt_path=auto, and the composed config printed once at the start (with the library noise left out)."""

import csv
import json
import logging

import pytest
import yaml
from conftest import CONF, TINY, compose_run, run_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from cnnlab import extras, resume


def losses(run_dir) -> list[float]:
    rows = csv.DictReader(next(run_dir.glob("csv/version_*/metrics.csv")).open())
    return [float(r["train/step_loss"]) for r in rows if r.get("train/step_loss")]


def test_debug_default_is_one_batch_of_each_stage(tmp_path):
    run_train([*TINY, "debug=default"], tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "finished" and results["global_step"] == 1  # fast_dev_run: 1 batch
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["tags"] == ["debug"]


def test_debug_overfit_memorizes_its_few_batches(tmp_path):
    run_train([*TINY, "debug=overfit", "trainer.max_epochs=8", "augment=none"], tmp_path)
    seen = losses(tmp_path)
    assert len(seen) == 8 * 3 and sum(seen[-3:]) < 0.5 * sum(seen[:3]), seen  # 3 batches per epoch, loss falls


def test_debug_profiler_and_limit(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run_train([*TINY, "debug=profiler", "trainer.limit_train_batches=3"], tmp_path / "p")
    assert "Profiler Report" in caplog.text
    run_train([*TINY, "debug=limit"], tmp_path / "l")
    assert json.loads((tmp_path / "l" / "results.json").read_text())["global_step"] == 3 * 6  # 6 batches < 10


def test_paths_group_moves_data_and_runs_without_changing_defaults(monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose("train", return_hydra_config=True)
        moved = compose("train", ["paths.data_dir=/datasets", "paths.log_dir=/scratch/runs", "data=mnist"],
                        return_hydra_config=True)
    assert default.data.root == "data/cifar10" and moved.data.root == "/datasets/mnist"
    unresolved = default.hydra.run._get_node("dir")._value()  # resolving unique_dir would create the directory
    assert unresolved.startswith("${unique_dir:${paths.log_dir}/") and default.paths.log_dir == "runs"
    assert moved.paths.log_dir == "/scratch/runs"


def test_tags_reach_config_and_loggers(tmp_path):
    run_train([*TINY, "trainer.max_steps=2", "tags=[baseline,v2]"], tmp_path)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["tags"] == ["baseline", "v2"]
    assert json.loads((tmp_path / "results.json").read_text())["tags"] == ["baseline", "v2"]
    hparams = next(tmp_path.glob("csv/version_*/hparams.yaml")).read_text()
    assert "baseline" in hparams and "v2" in hparams
    cfg = compose_run(["logger=wandb", "tags=[baseline]"], tmp_path / "w")
    assert list(cfg.logger.wandb.tags) == ["baseline"]


def test_callback_presets_add_to_the_defaults(tmp_path):
    cfg = compose_run(["callbacks=early_stopping"], tmp_path)
    assert {"best", "latest", "early_stopping"} <= set(cfg.callbacks)
    assert instantiate(cfg.callbacks.early_stopping).monitor == "val/err1"
    both = compose_run(["callbacks=[early_stopping,rich]"], tmp_path)
    assert both.callbacks.progress_bar._target_.endswith("RichProgressBar") and "early_stopping" in both.callbacks
    if extras.installed("rich"):
        instantiate(both.callbacks.progress_bar)
    else:
        with pytest.raises(extras.MissingExtraError, match=r"pip install 'cnnlab\[rich\]'"):
            extras.check(both)


def test_ckpt_path_auto_resumes_the_newest_unfinished_run_of_the_same_config(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    runs = tmp_path / "runs"
    same = [*TINY, "trainer.max_epochs=1", f"paths.log_dir={runs}", "ckpt_path=auto"]
    run_train(same, runs / "a")
    assert "no unfinished run of this config" in caplog.text
    (runs / "a" / "results.json").unlink()  # as a run killed after its last checkpoint leaves it
    run_train([*same[:-1], "seed=1", "ckpt_path=auto"], runs / "other")  # another config: never resumed from
    (runs / "other" / "results.json").unlink()
    caplog.clear()
    run_train(same, runs / "b")
    assert f"resuming {runs / 'a' / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert losses(runs / "b") == []  # a's one epoch was done: b only tests
    assert yaml.safe_load((runs / "b" / "config.yaml").read_text())["ckpt_path"].endswith("a/checkpoints/last.ckpt")


def test_comparable_ignores_only_the_run_directory_and_ckpt_path():
    a = {"ckpt_path": None, "seed": 0, "callbacks": {"best": {"dirpath": "/r/a/checkpoints"}}}
    b = {"ckpt_path": "auto", "seed": 0, "callbacks": {"best": {"dirpath": "/r/b/checkpoints"}}}
    assert resume.comparable(a, "/r/a") == resume.comparable(b, "/r/b")
    assert resume.comparable(a, "/r/a") != resume.comparable({**b, "seed": 1}, "/r/b")


def test_config_printed_once_and_library_noise_left_out(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run_train([*TINY, "trainer.max_steps=2"], tmp_path)
    printed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("composed config")]
    assert len(printed) == 1 and "model:" in printed[0] and "${" not in printed[0]
    for noise in ("💡 Tip", "already configured with model summary", "LeafSpec", "srun"):
        assert noise not in caplog.text, noise
