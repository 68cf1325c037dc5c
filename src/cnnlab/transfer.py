"""Transfer learning: start a built model from a cnnlab checkpoint or torchvision weights, give it a new head for the
run's classes, and train it with a strategy of conf/transfer (linear probe, fine-tune the last k stages, full
fine-tune with a lower backbone LR), BN statistics frozen or not. train.py wires it as
`instantiate(cfg.transfer)(instantiate(cfg.model), cfg)`; nothing else needs this module to build a network.

    python train.py model=resnet50 transfer=linear_probe transfer.weights=ResNet50_Weights.IMAGENET1K_V1 data=...
    python train.py model=resnet20 transfer=full transfer.weights=runs/<date>/<time>/checkpoints/last.ckpt

The head is every parameter whose shape depends on the number of classes: the final classifier (`fc` of ResNet,
`classifier[-1]` of VGG, NIN's last 1x1 conv) and the last layers of auxiliary classifiers. A stage is a run of
layers at one spatial resolution, the paper's conv1, conv2_x ... conv5_x of an ImageNet ResNet (He et al. 2016,
Table 1) or VGG's conv blocks between pools; layers after global pooling (fc6, fc7) and auxiliary classifiers
belong to the last stage.
"""

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnlab.checkpoint import check_compatible, load_checkpoint

log = logging.getLogger(__name__)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# torchvision's DenseNet files predate its module names: "denselayer1.norm.1.weight" is "denselayer1.norm1.weight"
# (the same rewrite torchvision's densenet._load_state_dict does).
DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.\w+)$")


class Transfer:
    """Where a model's weights come from, and which parts train at which LR with which BN statistics (group
    `transfer`)."""

    def __init__(self, weights: str | None = None, train_stages: int | None = None, backbone_lr: float = 1.0,
                 freeze_bn: bool = False, new_head: bool = True) -> None:
        """
        Args:
            weights: the initialization: a cnnlab checkpoint, a state-dict file or a torchvision weights name
                (ResNet50_Weights.IMAGENET1K_V1); None: the model's own initialization.
            train_stages: backbone stages that train, counted from the last; None: all, 0: none (a linear probe: only
                the new head trains). The stages before them are frozen, their BN statistics included.
            backbone_lr: LR of the trainable backbone parameters as a multiple of optim.lr (the head gets optim.lr).
            freeze_bn: also keep the BN layers of the trainable stages at their pretrained running statistics (and
                normalize with them in training mode); their scale and shift still train.
            new_head: initialize the head afresh (the model's own init); False keeps the pretrained head when the
                number of classes is the same.
        """
        if train_stages is not None and train_stages < 0:
            raise ValueError(f"train_stages must be >= 0 or null (all), got {train_stages}")
        if backbone_lr < 0:
            raise ValueError(f"backbone_lr must be >= 0, got {backbone_lr}")
        self.weights, self.train_stages, self.backbone_lr = weights, train_stages, backbone_lr
        self.freeze_bn, self.new_head = freeze_bn, new_head

    @property
    def changes_training(self) -> bool:
        return self.train_stages is not None or self.backbone_lr != 1.0 or self.freeze_bn

    def __call__(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        """`model`, built from cfg.model, initialized from self.weights and set up to train as this strategy says."""
        if not self.weights:
            if self.changes_training:
                raise ValueError(f"transfer={self.__dict__} needs transfer.weights=<checkpoint or torchvision weights>")
            return model
        freezes_bn = self.freeze_bn or self.train_stages is not None
        if freezes_bn and (cfg.get("trainer") or {}).get("sync_batchnorm"):  # SyncBN conversion drops the BN hooks
            raise ValueError("trainer.sync_batchnorm=true cannot keep frozen BN statistics frozen: set it false, or "
                             "use transfer=full with transfer.freeze_bn=false")
        head = head_keys(cfg.model)
        state, saved_config = load_state(self.weights)
        own = model.state_dict()
        keep_head = not self.new_head and all(k in state and state[k].shape == own[k].shape for k in head)
        current = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")}
        load_weights(model, state, set() if keep_head else head, saved_config, current)
        log.info("loaded %s; %s", self.weights, "kept its head" if keep_head else f"new head {sorted(head)}")
        with torch.device("meta"):
            probe = instantiate(cfg.model)
        size = cfg.data.get("image_size") or (cfg.get("augment") or {}).get("size") or 224  # in-memory, else crop
        self.apply(model, stages(probe, (1, cfg.data.in_channels, size, size)), head)
        return model

    def apply(self, model: nn.Module, stages: list[list[str]], head: set[str]) -> None:
        """Freeze early stages, scale the backbone LR (`model.lr_scales`, read by module.param_groups), freeze BN."""
        k = len(stages) if self.train_stages is None else self.train_stages
        if k > len(stages):
            raise ValueError(f"train_stages={k} but the model has {len(stages)} stages: {[s[0] for s in stages]} ...")
        frozen = [unit for stage in stages[: len(stages) - k] for unit in stage]
        lr_scales = dict(getattr(model, "lr_scales", {}))  # a model's own multipliers (FastNet's BN shifts) stay
        for name, p in model.named_parameters():
            if name in head:
                continue
            if inside(name, frozen):
                p.requires_grad_(False)
            elif self.backbone_lr != 1.0:
                lr_scales[name] = lr_scales.get(name, 1.0) * self.backbone_lr
        model.lr_scales = lr_scales
        bns = [m for name, m in model.named_modules()
               if isinstance(m, _BatchNorm) and (self.freeze_bn or inside(name, frozen))]
        for m in bns:
            m.register_forward_pre_hook(_normalize_with_running_stats)
        n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log.info("transfer: %d of %d stages train (%s ...), %d parameters frozen, backbone lr x %g, %d BN layers with "
                 "frozen statistics", k, len(stages), [s[0] for s in stages[len(stages) - k:]], n_frozen,
                 self.backbone_lr, len(bns))


def _normalize_with_running_stats(bn: nn.Module, args: tuple) -> None:
    # Lightning calls model.train() every epoch; this runs before every forward, so the layer stays in eval mode:
    # it normalizes with its running statistics and never updates them.
    bn.training = False


def inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def head_keys(model_cfg: Mapping) -> set[str]:
    """State-dict keys whose shape depends on num_classes: found by building the model for 2 and 3 classes."""
    if "num_classes" not in model_cfg:
        raise ValueError(f"model config {model_cfg.get('_target_')} has no num_classes, so its head cannot be found")
    with torch.device("meta"):
        a, b = (instantiate(model_cfg, num_classes=n).state_dict() for n in (2, 3))
    return {k for k in a if a[k].shape != b[k].shape}


def stages(model: nn.Module, input_shape: tuple[int, ...]) -> list[list[str]]:
    """The model's blocks grouped by the resolution of their output, in the order they run (one eval forward pass).

    Blocks are the children that run, looking inside containers and inside modules that are never called themselves
    (FastNet's groups). A block's resolution is the largest one output at or after it, so a squeeze-and-excitation or
    other 1x1 detour stays in its stage; blocks after global pooling and blocks that do not run in eval mode
    (auxiliary classifiers) join the last stage. `model` may live on the meta device."""
    sizes: dict[str, int] = {}  # module -> output width (0: not a feature map), in the order they first ran

    def record(name: str):
        def hook(_module, _inputs, out) -> None:
            sizes.setdefault(name, out.shape[-1] if isinstance(out, torch.Tensor) and out.ndim == 4 else 0)
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    units: list[str] = []

    def collect(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, CONTAINERS) or (full not in sizes and any(True for _ in child.children())):
                collect(full + ".", child)
            elif any(True for _ in child.parameters()):
                units.append(full)

    collect("", model)
    ran = sorted((n for n in units if n in sizes), key=list(sizes).index)
    suffix_max, running = {}, 0
    for n in reversed(ran):
        running = max(running, sizes[n])
        suffix_max[n] = running
    resolutions = sorted({r for r in suffix_max.values() if r > 0}, reverse=True) or [0]
    groups: list[list[str]] = [[] for _ in resolutions]
    for n in ran + [n for n in units if n not in sizes]:
        r = suffix_max.get(n, 0)
        groups[resolutions.index(r) if r in resolutions else -1].append(n)
    return [g for g in groups if g]


def load_state(source: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, run config or None) of a cnnlab checkpoint, a plain state-dict file or torchvision weights name."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        obj = load_checkpoint(path, key="transfer.weights")
        if "state_dict" in obj:  # a Lightning checkpoint of ClassifierModule: the network is its `model`
            state = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
            return state, obj.get("hyper_parameters", {}).get("run_config")
        if isinstance(obj.get("model"), dict):  # torchvision's reference scripts
            obj = obj["model"]
        return obj, None
    if "_Weights." not in str(source):
        raise FileNotFoundError(f"transfer.weights={source!r} is neither a checkpoint file nor a torchvision weights "
                                f"name such as ResNet50_Weights.IMAGENET1K_V1")
    from torchvision.models import get_weight

    try:
        weights = get_weight(str(source))
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"transfer.weights={source!r} is not a torchvision weights name ({err})") from err
    # $TORCH_HOME/hub/checkpoints first (where get_state_dict looks), else a download there; read as every file is,
    # weights-only (torchvision's own loader unpickles it: a file copied in by hand could run code)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[1]
    if not cache.is_file():
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cache), progress=True)
        except OSError as err:  # URLError is an OSError
            raise FileNotFoundError(f"torchvision weights {source} are not in the torch hub cache ({cache}) and could "
                                    f"not be downloaded from {weights.url} ({err}); copy the file there") from err
    state = load_checkpoint(cache, key=f"transfer.weights={source}: the torch hub file")
    return {DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}, None


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], skip: set[str] = frozenset(),
                 saved_config: dict | None = None, current_config: dict | None = None) -> None:
    """Load `state` into `model` strictly except the keys in `skip`; a mismatch raises ValueError listing it."""
    # Files saved before PyTorch 0.4.1 (torchvision's DenseNets, ...) lack BN's num_batches_tracked, as BN allows.
    own = model.state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    check_compatible({k: v for k, v in state.items() if k not in skip},
                     {k: v for k, v in own.items() if k not in skip}, saved_config, current_config)
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
