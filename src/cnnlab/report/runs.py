"""Reading run directories: overrides, resolved config, results.json and the epoch-level curves of metrics.csv; the
keys and jobs the multirun sweeps under them define."""

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CURVE_KEYS = ("train/err1", "val/err1", "train/err5", "val/err5", "train/loss", "val/loss")
DASH = "—"


@dataclass
class Run:
    """One run directory, read: its overrides, model name, resolved config, results and epoch-level curves."""

    path: Path
    overrides: dict[str, str]  # .hydra/overrides.yaml as key -> value
    model: str  # the model config's name (Hydra's runtime choice); "?" for a run without .hydra/
    config: dict  # config.yaml (resolved)
    results: dict | None  # results.json; None: failed or unfinished
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(step, value)] per epoch

    @property
    def finished(self) -> bool:
        return bool(self.results) and self.results.get("status") == "finished"

    @property
    def status(self) -> str:
        """results.json's status (finished, diverged, no_test_data; tuned: a finder's report alone, tune.apply=false,
        nothing trained), or "failed or unfinished" without one."""
        return (self.results or {}).get("status") or "failed or unfinished"

    def test(self, key: str = "test/err1") -> float | None:
        return self.results["test"].get(key) if self.finished else None

    def last(self, key: str) -> float | None:
        return self.curves[key][-1][1] if self.curves.get(key) else None

    @property
    def steps(self) -> int:
        if self.finished:
            return self.results["global_step"]
        return max((s for c in self.curves.values() for s, _ in c), default=0)


def _yaml(path: Path) -> dict | list | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Epoch-level metrics of csv/version_*/metrics.csv; a resumed run's later version overrides repeated epochs. A
    committed run (results/) keeps them as metrics.csv beside results.json."""
    by_epoch: dict[str, dict[int, tuple[int, float]]] = {k: {} for k in CURVE_KEYS}
    versions = sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in versions or [p for p in [run_dir / "metrics.csv"] if p.is_file()]:
        with path.open() as f:
            for row in csv.DictReader(f):
                for key in CURVE_KEYS:
                    if row.get(key):
                        by_epoch[key][int(row["epoch"])] = (int(row["step"]), float(row[key]))
    return {k: [v[e] for e in sorted(v)] for k, v in by_epoch.items() if v}


def read_run(path: Path) -> Run:
    overrides = {}
    for o in _yaml(path / ".hydra" / "overrides.yaml") or []:
        key, _, value = o.lstrip("+~").partition("=")
        overrides[key] = value
    hydra = (_yaml(path / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
    model = hydra.get("runtime", {}).get("choices", {}).get("model", overrides.get("model", "?"))
    results = json.loads((path / "results.json").read_text()) if (path / "results.json").is_file() else None
    config = _yaml(path / "config.yaml") or resolved(_yaml(path / ".hydra" / "config.yaml") or {})
    return Run(path, overrides, model, config, results, read_curves(path))


def resolved(config: dict) -> dict:
    """Hydra's .hydra/config.yaml with the interpolations resolved that need no Hydra runtime (model.num_classes:
    ${data.num_classes}); a top-level node that needs one (${hydra:runtime.output_dir}) stays as written."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg, out = OmegaConf.create(config), {}
    for key in config:
        try:
            out[key] = OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        except OmegaConfBaseException:
            out[key] = config[key]
    return out


def find_runs(dirs: list[Path]) -> list[Run]:
    paths = set()
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"not a directory: {d}")
        paths |= {p.parent.parent for p in d.rglob(".hydra/overrides.yaml")}
        paths |= {p.parent for p in d.rglob("config.yaml") if p.parent.name != ".hydra"}
    if not paths:
        raise FileNotFoundError(f"no run directories (with .hydra/ or config.yaml) under {', '.join(map(str, dirs))}")
    order = sorted(paths, key=lambda p: (str(p.parent), int(p.name) if p.name.isdigit() else -1, p.name))
    return [read_run(p) for p in progress(order, "reading runs")]


def read_sweeps(dirs: list[Path], runs: list[Run]) -> tuple[list[str], list[str], list[str]]:
    """The keys the multirun.yaml sweeps under dirs vary, the jobs they define that have no run directory (the sweep
    stopped before them or is still running), and the best trial of each Optuna study."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys, missing = {}, []
    for multirun in (m for d in dirs for m in d.rglob("multirun.yaml")):
        hydra = _yaml(multirun)["hydra"]
        sweeper = hydra.get("sweeper") or {}
        # the sweeper's params, then the command line's overrides; a key given later wins (Hydra's BasicSweeper)
        args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + hydra["overrides"]["task"]
        grid = {o.key_or_group: 1 if not o.is_sweep_override() else len(list(o.sweep_string_iterator()))
                if o.is_discrete_sweep() else math.inf for o in OverridesParser.create().parse_overrides(args)}
        keys |= {k: None for k, n in grid.items() if n > 1}
        n = sweeper["n_trials"] if "n_trials" in sweeper else math.prod(grid.values())  # Optuna: n_trials
        found = {r.path.name for r in runs if r.path.parent == multirun.parent}
        missing += [f"{multirun.parent}/{i}" for i in range(n) if str(i) not in found]
    best = [f"- Optuna, `{p.parent}`: best value {r['best_value']:.4f} at "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items())
            for p in (p for d in dirs for p in d.rglob("optimization_results.yaml")) if (r := _yaml(p))]
    return list(keys), missing, best


def swept_keys(runs: list[Run], declared: list[str]) -> list[str]:
    """The keys the sweeps declare, then other override keys whose value differs between runs."""
    runs = [r for r in runs if r.overrides]  # a run without .hydra/ tells nothing
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides if not k.startswith("hydra.")))
    return [*declared, *(k for k in keys if k not in declared and len({r.overrides.get(k) for r in runs}) > 1)]


def short(value: str) -> str:
    """An override value for a table: floats from a search (0.08558894657793088) to 4 significant digits."""
    try:
        return f"{float(value):.4g}" if len(value) > 6 and "." in value else value
    except ValueError:
        return value


def groups(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(tuple(short(r.overrides.get(k, DASH)) for k in keys), []).append(r)
    return out


def progress(items: list, what: str):
    from tqdm import tqdm

    return tqdm(items, desc=what, leave=False, disable=len(items) < 5)
