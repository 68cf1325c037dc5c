"""J networks of one architecture trained as one program: their parameters and buffers stacked along a leading job
dimension, one forward pass for all of them through torch.func (functional_call under vmap: convolutions become
grouped convolutions, as in HFTA, Wang et al. 2021), one backward pass of the summed losses.

Each job keeps its own `nn.Module` whose parameters and buffers are views of the stacks, so its own torch.optim
optimizer and LambdaLR step it with exactly the library's math (momentum, Nesterov, weight decay, AdamW), its BN
layers in eval mode score it, and its state_dict is a plain single-network checkpoint. The jobs never mix: the
backward pass of job j's loss reaches only job j's slices, and BN running statistics are updated per slice.
"""

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


class RandomOpError(RuntimeError):
    """The model draws random numbers while training (dropout, stochastic depth): vmap would draw them differently
    from the separate runs."""


class FusedModels:
    """J copies of one architecture as stacked tensors; `models[j]` is job j's network, a view of the stacks."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        """
        Args:
            models: the J networks, built as the separate runs build them (each with its own seed), same shapes.
        """
        self.models = list(models)
        self.params, self.buffers = stack_module_state(self.models)  # J x ... leaves, copies of the models' tensors
        self.grads = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.base = copy.deepcopy(self.models[0]).to("meta")  # the architecture, without storage
        for j, m in enumerate(self.models):
            for name, p in self.params.items():
                owner, leaf = _owner(m, name)
                view = nn.Parameter(p.detach()[j], requires_grad=owner._parameters[leaf].requires_grad)
                view.grad = self.grads[name][j]  # optimizers read these; backward writes the stack once per step
                owner._parameters[leaf] = view
            for name, b in self.buffers.items():
                owner, leaf = _owner(m, name)
                owner._buffers[leaf] = b[j]

    def __len__(self) -> int:
        return len(self.models)

    def _call(self, params: dict, buffers: dict, x: torch.Tensor):
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor):
        """J x N x C x H x W -> J x N x K logits (or a tuple of them, for aux heads); BN in training mode updates
        each job's running statistics in its slice of the buffer stacks."""
        self.base.train()
        try:
            return torch.vmap(self._call, randomness="error")(self.params, self.buffers, x)
        except RuntimeError as err:
            if "randomness" in str(err):
                raise RandomOpError(str(err)) from None
            raise

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of the summed per-job losses into each job's .grad (views of one stack per tensor)."""
        names = [k for k, v in self.params.items() if v.requires_grad]
        grads = torch.autograd.grad(loss, [self.params[k] for k in names], allow_unused=True)
        grads = [torch.zeros_like(self.params[k]) if g is None else g for k, g in zip(names, grads, strict=True)]
        torch._foreach_copy_([self.grads[k] for k in names], grads)


def job_losses(out, y: torch.Tensor, label_smoothing: Sequence[float], aux_weight: float) -> torch.Tensor:
    """Per-job mean softmax cross-entropy (+ aux_weight x each auxiliary head's), as ClassifierModule computes it: a
    J-vector. y: J x N class indices or J x N x K soft targets."""
    logits, *aux = out if isinstance(out, tuple | list) else (out,)
    eps = set(label_smoothing)

    def ce(z: torch.Tensor) -> torch.Tensor:
        if len(eps) == 1:  # one smoothing for all: one call over the J x N samples
            per = F.cross_entropy(z.flatten(0, 1), y.flatten(0, 1), label_smoothing=next(iter(eps)),
                                  reduction="none")
            return per.view(z.shape[:2]).mean(1)
        return torch.stack([F.cross_entropy(z[j], y[j], label_smoothing=e) for j, e in enumerate(label_smoothing)])

    loss = ce(logits)
    for a in aux:
        loss = loss + aux_weight * ce(a)
    return loss


@torch.no_grad()
def misses(logits: torch.Tensor, y: torch.Tensor, top: int) -> torch.Tensor:
    """Images whose class is not among the `top` highest scores, per leading index (... x N x K logits); soft
    targets are scored by their top class, as ClassifierModule does."""
    target = y.argmax(-1) if y.ndim == logits.ndim else y
    hit = (logits.topk(top, -1).indices == target[..., None]).any(-1)
    return (~hit).sum(-1)
