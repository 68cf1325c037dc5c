"""The training module: loss with label smoothing and auxiliary heads, error metrics, weight-decay groups; the resume
warning of its callbacks said once."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models import ResNet
from cnnlab.module import ClassifierModule, param_groups


def test_weight_decay_can_skip_bn_and_bias():
    model = ResNet([1, 1, 1], [4, 8, 16], stem="cifar", shortcut="A", num_classes=10)
    assert len(param_groups(model)) == 1
    decay, no_decay = param_groups(model, norm_bias_decay=False)
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])  # conv and fc weights
    assert {p.ndim for p in no_decay["params"]} == {1}  # BN weights and biases, the fc bias
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = torch.optim.SGD(param_groups(model, False), lr=0.1, weight_decay=1e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


class TwoHeads(nn.Module):
    """Returns (logits, aux) in training mode, like GoogLeNet."""

    def __init__(self) -> None:
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return (self.main(x), self.aux(x)) if self.training else self.main(x)


def test_loss_weights_auxiliary_heads_and_smooths_labels():
    torch.manual_seed(0)
    model, x, y = TwoHeads(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    module = ClassifierModule(model, optimizer=None, schedule=None, num_classes=3, label_smoothing=0.1, aux_weight=0.3)
    module.log = lambda *a, **k: None  # no trainer attached
    loss = module.training_step((x, y), 0)
    expected = F.cross_entropy(model.main(x), y, label_smoothing=0.1) + 0.3 * F.cross_entropy(
        model.aux(x), y, label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item())
    module.eval()
    module.validation_step((x, y), 0)
    top1 = (model.main(x).argmax(1) == y).float().mean()
    val = module.metrics["val"].compute()
    assert val["err1"] == pytest.approx(1 - top1.item()) and val["loss"] == pytest.approx(
        F.cross_entropy(model.main(x), y, label_smoothing=0.1).item())
    assert val["err5"] == 0.0  # top-3 of 3 classes always hits


def test_bad_label_smoothing_is_named():
    with pytest.raises(ValueError, match="got 1.5"):
        ClassifierModule(nn.Linear(2, 2), None, None, num_classes=2, label_smoothing=1.5)


def test_resume_length_warning_is_said_once(tiny, tmp_path, caplog):
    import logging
    import warnings

    from conftest import run_train

    run_train([*tiny, "trainer.max_epochs=1"], tmp_path)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train([*tiny, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path)
    said = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert sum("RESUMING WITH A DIFFERENT RUN LENGTH" in m for m in said) == 1
