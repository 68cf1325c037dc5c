"""The zoo record conf/zoo.json, the one place model sizes are pinned: every conf/model/*.yaml builds to its entry
(parameters, auxiliary heads, input, classes, GMACs), entries stay near the papers' figures or say why, and
docs/MODEL_ZOO.md is what the record generates."""

import json

import pytest
import torch
from conftest import config_names

from cnnlab import summary as S

torch.set_num_threads(1)
RECORD = S.read_record()
# Over ~300 modules: one meta-device forward pass takes 0.5-5 s on 2 shared CPU cores; `pytest -m slow` runs them.
DEEP = ("densenet", "resnet101", "resnext101", "wide_resnet101", "resnet110", "plain110", "resnet152", "resnet1202",
        "preact_resnet164", "preact_resnet1001")


def entry(name: str) -> dict:
    assert name in RECORD, (f'conf/model/{name}.yaml has no entry in conf/zoo.json: add "{name}": {{"data": ..., '
                            '"input_size": ..., "paper": ...}, then run python -m cnnlab.summary --zoo --json')
    return RECORD[name]


@pytest.mark.parametrize("name", config_names("model"))
def test_every_config_builds_to_its_record_entry(name: str) -> None:
    e = entry(name)
    cfg, size = S.load(name, [])
    model, _ = S.build(cfg, size)
    assert (e["in_channels"], size, e["num_classes"]) == (cfg.data.in_channels, e["input_size"], cfg.data.num_classes)
    assert sum(p.numel() for p in model.parameters()) == e["params"] + e["aux_params"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith(DEEP) else n
                                  for n in config_names("model")])
def test_forward_pass_matches_the_record(name: str) -> None:
    """The inference network (the modules an eval pass runs), the GMACs and the logits' shape, at the paper's input."""
    e = entry(name)
    model, x = S.build(*S.load(name, []))
    _, counter, params = S.profile(model, x)
    assert params == e["params"]
    assert counter.get_total_flops() / 2 == round(e["gmacs"] * 1e9)
    assert model(x).shape == (1, e["num_classes"])


def test_record_has_no_entry_without_a_config() -> None:
    assert sorted(RECORD) == config_names("model")


@pytest.mark.parametrize("name", [n for n, e in RECORD.items() if e["aux_params"]])
def test_inference_count_is_the_network_without_its_auxiliary_heads(name: str) -> None:
    """GoogLeNet and Inception-v3: the papers count the network without the training-only classifiers."""
    cfg, size = S.load(name, ["model.aux_logits=false"])
    model, _ = S.build(cfg, size)
    assert sum(p.numel() for p in model.parameters()) == RECORD[name]["params"]


@pytest.mark.parametrize("name", [n for n, e in RECORD.items() if e["paper"]])
def test_record_is_within_5_percent_of_the_paper_or_says_why(name: str) -> None:
    """Papers round to 2-3 significant figures; a larger gap needs a note, and a note needs a gap."""
    e, paper = RECORD[name], RECORD[name]["paper"]
    assert paper["source"]
    off = {k: e[k] / paper[k] - 1 for k in ("params", "gmacs") if paper[k] is not None}
    assert off, "a paper entry without a figure"
    assert bool(paper.get("note")) == any(abs(d) > 0.05 for d in off.values()), off


def test_model_zoo_md_is_what_the_record_generates() -> None:
    assert S.TABLE.read_text() == S.markdown(RECORD), "stale: run python -m cnnlab.summary --zoo"


def test_remeasure_keeps_the_conditions_and_papers_and_redoes_the_counts(tmp_path, monkeypatch) -> None:
    stale = {n: {**RECORD[n], "params": 1, "aux_params": 2, "gmacs": 3.0} for n in ("lenet5", "googlenet")}
    monkeypatch.setattr(S, "RECORD", tmp_path / "zoo.json")
    S.write_record(stale)
    S.write_record(S.remeasure(S.read_record(), ["lenet5", "googlenet"]))
    assert S.read_record() == {n: RECORD[n] for n in ("googlenet", "lenet5")}
    assert len(S.RECORD.read_text().splitlines()) == 2 + 2  # braces and one line per config: one-line diffs
    with pytest.raises(ValueError, match="vgg16: no entry in"):
        S.remeasure(S.read_record(), ["lenet5", "vgg16"])


@pytest.mark.slow
def test_zoo_json_regenerates_the_committed_record(tmp_path, monkeypatch) -> None:
    """`python -m cnnlab.summary --zoo --json` over all configs (about 45 s on an idle CPU) changes nothing."""
    monkeypatch.setattr(S, "RECORD", tmp_path / "zoo.json")
    monkeypatch.setattr(S, "TABLE", tmp_path / "MODEL_ZOO.md")
    S.write_record(RECORD)
    S.write_record(S.remeasure(S.read_record()))
    assert json.loads(S.RECORD.read_text()) == RECORD
