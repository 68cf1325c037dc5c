"""README.md's results rows and docs/reproductions-cpu.md's tables are what `python -m cnnlab.report --table ...`
prints from the committed runs under results/, character for character; the verdicts follow the seed ranges."""

import json
from pathlib import Path

import pytest
import yaml

from cnnlab.report import main
from cnnlab.report.claims import CLAIMS, MEASURED, cpu_doc_tables, folders, readme_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def readme_table_rows(text: str) -> list[str]:
    """The body rows of the table under README.md's "## Results" heading."""
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [line for line in lines if not line.startswith(("| claim (paper)", "|---"))]


def cifar_net(depth: int, residual: bool) -> dict:
    n = (depth - 2) // 6
    return {"_target_": "cnnlab.models.ResNet", "depths": [n] * 3, "widths": [8, 16, 32], "block": "basic",
            "stem": "cifar", "shortcut": "A", "residual": residual, "num_classes": "${data.num_classes}",
            "in_channels": "${data.in_channels}"}


LENET = {"_target_": "cnnlab.models.LeNet5", "activation": "tanh", "pool": "avg", "num_classes": "${data.num_classes}",
         "in_channels": "${data.in_channels}"}


def write_run(path: Path, experiment: str, model: str, model_cfg: dict, seed: int, train: float, test: float,
              steps: int) -> None:
    """The committed layout of one run: results.json, metrics.csv, .hydra/config.yaml, .hydra/overrides.yaml."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", f"model={model}",
                                                                    f"experiment={experiment}"]))
    channels = 1 if model.startswith("lenet") else 3
    config = {"seed": seed, "model": model_cfg, "data": {"num_classes": 10, "in_channels": channels, "seed": "${seed}"},
              "trainer": {"default_root_dir": "${hydra:runtime.output_dir}"}}  # needs Hydra: left as written
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.csv").write_text(f"epoch,step,train/err1,val/err1\n0,{steps // 2 - 1},0.9,\n0,{steps // 2 - 1},,"
                                      f"0.8\n1,{steps - 1},{train / 100},\n1,{steps - 1},,{test / 100 + 0.01}\n")
    (path / "results.json").write_text(json.dumps({"status": "finished", "best_score": test / 100 + 0.01,
                                                   "test": {"test/err1": test / 100}, "epoch": 2,
                                                   "global_step": steps}))


def measured(folder: Path, experiment: str, command: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MEASURED).write_text(json.dumps({
        "experiment": experiment, "commit": "0123456789abcdef0123456789abcdef01234567", "command": command,
        "machine": "2-core CPU VM shared with other jobs", "threads": 1, "dates": "2025-01-02"}))


# (train, test) error % per seed 0, 1, 2: plain rises at every depth; ResNet falls from 8 to 14, overlaps at 14-20
DEGRADATION = {
    ("plain", 8): [(44, 43), (45, 44), (46, 45)], ("plain", 14): [(47, 46), (48, 47), (49, 48)],
    ("plain", 20): [(52, 51), (53, 52), (54, 53)],
    ("resnet", 8): [(45, 44), (46, 45), (47, 46)], ("resnet", 14): [(42, 41), (43, 42), (44, 43)],
    ("resnet", 20): [(40.5, 40), (42, 41), (43.5, 42)],
}
LENET_TEST = [0.77, 0.78, 0.80]
FIG6 = "python train.py -m experiment=he2016_degradation_cpu data.root=../shared/datasets/cifar10-jpg seed=0,1,2"
MNIST = "python train.py -m experiment=lenet5_mnist_cpu data.root=../shared/datasets/mnist seed=0,1,2"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    folder, k = root / "he2016_degradation_cpu", 0
    measured(folder, "he2016_degradation_cpu", FIG6)
    for (family, depth), errors in DEGRADATION.items():
        for seed, (train, test) in enumerate(errors):
            write_run(folder / str(k), "he2016_degradation_cpu", f"{family}{depth}",
                      cifar_net(depth, family == "resnet"), seed, train, test, 2000)
            k += 1
    measured(root / "lenet5_mnist_cpu", "lenet5_mnist_cpu", MNIST)
    for seed, test in enumerate(LENET_TEST):
        write_run(root / "lenet5_mnist_cpu" / str(seed), "lenet5_mnist_cpu", "lenet5", LENET, seed, 0.21, test, 18760)
    return root


ROWS = [
    "| LeNet-5 reaches 0.95% test error on MNIST without distortions (LeCun et al. 1998, III.C) "
    f"| `{MNIST}` at commit `0123456789`: 18,760 iterations; seeds 0, 1, 2 | 3 | 0.78 ± 0.02% test error | 0.95% "
    "| yes: every seed at or below 0.95% (test error ranges 0.77-0.80%) |",
    f"| Deeper plain nets train worse (He et al. 2016, Fig. 6) | `{FIG6}` at commit `0123456789`: 2,000 iterations; "
    "seeds 0, 1, 2 | 3 | plain-8 / 14 / 20: 45.00 ± 1.00 / 48.00 ± 1.00 / 53.00 ± 1.00% final training error "
    "| deeper plain above shallower | yes, at every depth (final training error ranges 44.00-46.00 / 47.00-49.00 / "
    "52.00-54.00%) |",
    "| Deeper ResNets train and test better (He et al. 2016, Fig. 6; Table 6: ResNet-56 6.97% vs ResNet-20 8.75% test) "
    f"| `{FIG6}` at commit `0123456789`: 2,000 iterations; seeds 0, 1, 2 | 3 | ResNet-8 / 14 / 20: 46.00 ± 1.00 / "
    "43.00 ± 1.00 / 42.00 ± 1.50% final training error; 45.00 ± 1.00 / 42.00 ± 1.00 / 41.00 ± 1.00% test error "
    "| deeper ResNet below shallower | only from 8 to 14; not from 14 to 20 (final training error ranges "
    "45.00-47.00 / 42.00-44.00 / 40.50-43.50%; test error ranges 44.00-46.00 / 41.00-43.00 / 40.00-42.00%) |",
]


def test_readme_rows_from_committed_runs(results: Path, capsys) -> None:
    assert readme_rows([results]) == ROWS
    main(["--table", "readme", str(results)])
    assert capsys.readouterr().out == "\n".join(ROWS) + "\n"
    readme = "# x\n\n## Results: claims\n\n| claim (paper) | recipe, budget | n | ours | paper | shown? |\n" \
             "|---|---|---|---|---|---|\n" + "\n".join(ROWS) + "\n\n## Documentation\n\n| page | what |\n"
    assert readme_table_rows(readme) == ROWS
    drifted = readme.replace("45.00 ± 1.00 / 48.00", "45.00 ± 1.00 / 48.01")
    assert readme_table_rows(drifted) != readme_rows([results])  # one digit off: the check fails


def test_cpu_doc_tables_name_the_commit_and_every_seed(results: Path) -> None:
    text = cpu_doc_tables([results])
    assert f"`{FIG6}` at commit `0123456789`, 2-core CPU VM shared with other jobs, 1 thread(s) per run, 2025-01-02; " \
           "2,000 iterations; seeds 0, 1, 2 (in that order)." in text
    assert "| plain-8 | 19,218 | 3 | 45.00 ± 1.00 (44.00, 45.00, 46.00) | 44.00 ± 1.00 (43.00, 44.00, 45.00) |" in text
    assert ("| ResNet-20 | 68,050 | 3 | 42.00 ± 1.50 (40.50, 42.00, 43.50) | 41.00 ± 1.00 (40.00, 41.00, 42.00) |"
            in text)
    assert "| LeNet-5 | 61,706 | 3 | 0.21 ± 0.00 (0.21, 0.21, 0.21) | 0.78 ± 0.02 (0.77, 0.78, 0.80) |" in text


def test_verdicts_follow_the_seed_ranges(results: Path) -> None:
    folder = results / "he2016_degradation_cpu"
    resnet8 = [p for p in folder.iterdir() if (p / "results.json").is_file()
               and "model=resnet8" in (p / ".hydra" / "overrides.yaml").read_text()]
    # one ResNet-8 seed at 43.5% training error: its range (43.5-47) now overlaps ResNet-14's (42-44)
    seed0 = next(p for p in resnet8 if "seed=0" in (p / ".hydra" / "overrides.yaml").read_text())
    (seed0 / "metrics.csv").write_text("epoch,step,train/err1\n1,1999,0.435\n")
    row = readme_rows([results])[2]
    assert row.endswith("| not shown: seed ranges overlap or are in the other order (final training error ranges "
                        "43.50-47.00 / 42.00-44.00 / 40.50-43.50%; test error ranges 44.00-46.00 / 41.00-43.00 / "
                        "40.00-42.00%) |")
    lenet = results / "lenet5_mnist_cpu" / "2" / "results.json"
    lenet.write_text(lenet.read_text().replace('"test/err1": 0.008', '"test/err1": 0.0096'))
    assert readme_rows([results])[0].endswith("| no: not every seed at or below 0.95% (test error ranges 0.77-0.96%) |")


def test_a_results_folder_must_say_how_it_was_measured(results: Path) -> None:
    (results / "lenet5_mnist_cpu" / MEASURED).write_text(json.dumps({"experiment": "lenet5_mnist_cpu"}))
    with pytest.raises(ValueError, match="lacks commit, command, machine, threads, dates"):
        readme_rows([results])


def test_collect_keeps_the_small_files_and_prints_the_same_rows(results: Path, tmp_path: Path) -> None:
    # a run directory as train.py leaves it: metrics under csv/version_0/, checkpoints, logs
    raw = tmp_path / "multirun" / "0"
    write_run(raw, "lenet5_mnist_cpu", "lenet5", LENET, 0, 0.21, 0.77, 18760)
    (raw / "csv" / "version_0").mkdir(parents=True)
    (raw / "metrics.csv").rename(raw / "csv" / "version_0" / "metrics.csv")
    (raw / "checkpoints").mkdir()
    (raw / "checkpoints" / "last.ckpt").write_bytes(b"0" * 1000)
    info = ["experiment=lenet5_mnist_cpu", "commit=0123456789abcdef", f"command={MNIST}", "machine=m", "threads=1",
            "dates=d"]
    main(["--collect", str(tmp_path / "kept" / "lenet"), str(tmp_path / "multirun"), "--measured", *info])
    kept = tmp_path / "kept" / "lenet"
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file()) == [
        "0/.hydra/config.yaml", "0/.hydra/hydra.yaml", "0/.hydra/overrides.yaml", "0/metrics.csv", "0/results.json",
        MEASURED]
    assert readme_rows([kept])[0].split(" | ")[2:] == ["1", "0.77% test error", "0.95%",
                                                        "yes: every seed at or below 0.95% (test error ranges "
                                                        "0.77-0.77%) |"]


def committed() -> list[Path]:
    return folders([RESULTS]) if RESULTS.is_dir() and any(RESULTS.rglob(MEASURED)) else []


@pytest.mark.skipif(not committed(), reason="results/ holds no committed runs yet (no results/<name>/MEASURED.json)")
def test_readme_results_rows_are_what_the_committed_runs_print() -> None:
    expected = readme_rows([RESULTS])
    assert readme_table_rows((ROOT / "README.md").read_text()) == expected, (
        "README.md's results rows differ from `python -m cnnlab.report --table readme results/`; paste its output")


@pytest.mark.skipif(not committed(), reason="results/ holds no committed runs yet (no results/<name>/MEASURED.json)")
@pytest.mark.parametrize("folder", committed(), ids=lambda p: p.name)
def test_cpu_doc_tables_are_what_the_committed_runs_print(folder: Path) -> None:
    doc = (ROOT / "docs" / "reproductions-cpu.md").read_text()
    assert cpu_doc_tables([folder]) in doc, (
        f"docs/reproductions-cpu.md lacks the table of {folder.name}; paste `python -m cnnlab.report --table cpu-doc "
        f"results/{folder.name}`")


def test_every_claim_names_an_experiment_config() -> None:
    assert {c.experiment for c in CLAIMS} <= {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
