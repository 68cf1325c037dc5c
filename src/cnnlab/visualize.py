"""Look inside a trained checkpoint: first-layer filters, a channel's top-9 images, Grad-CAM, the confusion matrix.

    python -m cnnlab.visualize ckpt=<path> what=filters out=filters.png            # like AlexNet's Fig. 3
    python -m cnnlab.visualize ckpt=<path> what=top9 layer=layer3 channel=7 out=top9.png [limit=N] [data.root=...]
    python -m cnnlab.visualize ckpt=<path> what=gradcam image=cat.jpg [target=cat] [layer=layer3] out=cam.png
    python -m cnnlab.visualize ckpt=<path> what=confusion out=confusion.png [data.root=...]   # + confusion.csv

`top9` and `confusion` read the checkpoint's test set through its own data config (override data.root when the data
lives elsewhere now); `limit` caps the images read. `layer` is a module name (`python -m cnnlab.summary model=...`
lists them); by default the last feature map larger than 1x1 (ResNet: its last stage). The command line is Hydra's
(cnnlab.cli): the keys above are conf/visualize.yaml's, any other key=value overrides the checkpoint's run config,
`--help` lists them.
"""

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from cnnlab import cli
from cnnlab.extras import require
from cnnlab.predict import Checkpoint, from_config, read_image

Figure = require("matplotlib.figure", "report", "cnnlab.visualize").Figure

log = logging.getLogger(__name__)
WHAT = ("filters", "top9", "gradcam", "confusion")


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    return conv


def filters(ck: Checkpoint, out: Path, pixels: int = 32) -> torch.Tensor:
    """The first layer's kernels as one image grid, each kernel min-max scaled on its own (Krizhevsky et al. 2012,
    Fig. 3); RGB for colour input, grey otherwise (multi-channel input: the mean over channels). Returns the grid."""
    w = first_conv(ck.model).weight.detach().float().cpu()  # out x in x k x k
    w = w if w.shape[1] in (1, 3) else w.mean(1, keepdim=True)
    w = F.interpolate(w, scale_factor=max(1, pixels // w.shape[-1]), mode="nearest")
    grid = make_grid(w, nrow=math.ceil(math.sqrt(len(w) * 4 / 3)), padding=2, normalize=True, scale_each=True,
                     pad_value=1.0)  # about 4:3 wide: AlexNet's 96 kernels as 12 x 8
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, out)
    return grid


def find_layer(model: nn.Module, name: str | None, input_shape: tuple[int, ...]) -> tuple[str, nn.Module]:
    """The named module, or the last one to output a feature map larger than 1x1 (the deepest spatial layer)."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules or not name:
            tops = [n for n, _ in model.named_children()]
            raise ValueError(f"layer={name!r} is not a module of {type(model).__name__}; e.g. {tops}")
        return name, modules[name]
    spatial = []
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: spatial.append(n) if isinstance(o, torch.Tensor) and
                                     o.ndim == 4 and o.shape[-1] * o.shape[-2] > 1 else None)
             for n, m in modules.items() if n]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape[-3:], device=next(model.parameters()).device))
    for h in hooks:
        h.remove()
    if not spatial:
        raise ValueError(f"{type(model).__name__} has no feature map larger than 1x1 at input {input_shape}")
    return spatial[-1], modules[spatial[-1]]


def eval_batches(ck: Checkpoint, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalized images, labels) of the checkpoint's test set, one center view per image."""
    cfg = OmegaConf.create(OmegaConf.to_container(ck.cfg))
    if "evaluation" in cfg.data:  # image folders: one center crop per image, not the multi-view test protocol
        cfg.data.evaluation.name, cfg.data.evaluation.flip = "center", False
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    data.setup("test")
    device, seen = next(ck.model.parameters()).device, 0
    for batch in tqdm(data.test_dataloader(), desc="test set", unit="batch"):
        x, y = data.on_after_batch_transfer(batch, 0)[:2]
        if limit is not None and seen + len(y) > limit:
            x, y = x[: limit - seen], y[: limit - seen]
        seen += len(y)
        yield x.to(device), y.to(device)
        if limit is not None and seen >= limit:
            return
    if seen == 0:  # image folders leave unreadable files out: here, all of them
        raise ValueError(f"no readable test image in {cfg.data.get('root')}: nothing to show")


@torch.no_grad()
def top9(ck: Checkpoint, out: Path, layer: str | None = None, channel: int = 0, limit: int | None = None,
         k: int = 9) -> tuple[str, torch.Tensor]:
    """The k test images that excite one channel of one layer most (its maximum over positions; Zeiler & Fergus
    2014, Fig. 4). Returns the layer name and the k activations, largest first."""
    name, module = find_layer(ck.model, layer, ck.input_shape())
    acts: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, o: acts.append(o))
    best_v, best_x, best_y = torch.empty(0), [], torch.empty(0, dtype=torch.long)
    try:
        for x, y in eval_batches(ck, limit):
            acts.clear()
            ck.model(x)
            a = acts[0]
            if not 0 <= channel < a.shape[1]:
                raise ValueError(f"channel={channel} but layer {name} has {a.shape[1]} channels")
            v = a[:, channel].flatten(1).amax(1).cpu() if a.ndim > 2 else a[:, channel].cpu()
            v, idx = torch.cat([best_v, v]).topk(min(k, len(best_v) + len(v)))
            pool_x, pool_y = [*best_x, *ck.denormalize(x).cpu()], torch.cat([best_y, y.cpu()])
            best_v, best_x, best_y = v, [pool_x[i] for i in idx], pool_y[idx]
    finally:
        hook.remove()
    fig = Figure(figsize=(7, 7.6), layout="constrained")
    fig.suptitle(f"top {len(best_v)} test images of {name} channel {channel}")
    for i, ax in enumerate(fig.subplots(math.ceil(k / 3), 3).flat):
        ax.set_axis_off()
        if i < len(best_v):
            show(ax, best_x[i])
            ax.set_title(f"{ck.classes[best_y[i]]}: {best_v[i]:.2f}", fontsize=9)
    save(fig, out)
    return name, best_v


def grad_cam(ck: Checkpoint, x: torch.Tensor, layer: str | None = None, target: int | None = None
             ) -> tuple[torch.Tensor, int, float, str]:
    """Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) of one input (C x H x W): ReLU(sum_k alpha_k A^k) with alpha_k the
    spatial mean of d y^c / d A^k, upsampled to H x W and scaled to 0-1. Returns (map, class, probability, layer)."""
    name, module = find_layer(ck.model, layer, x.shape)
    captured: list[torch.Tensor] = []

    def keep(_m, _i, out: torch.Tensor) -> torch.Tensor:
        captured.append(out)
        return out.clone()  # later in-place ops (ReLU(inplace=True)) change the clone, not the captured map

    hook = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = ck.model(x[None].to(next(ck.model.parameters()).device))
            c = int(logits.argmax()) if target is None else target
            (grad,) = torch.autograd.grad(logits[0, c], captured[0])
    finally:
        hook.remove()
    a = captured[0].detach()
    if a.ndim != 4:
        raise ValueError(f"Grad-CAM needs a feature map, but layer {name} outputs shape {tuple(a.shape)}")
    cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))  # 1 x 1 x h x w
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam.cpu(), c, float(logits.detach().softmax(-1)[0, c]), name


def gradcam(ck: Checkpoint, image: Path, out: Path, layer: str | None = None, target: str | None = None
            ) -> torch.Tensor:
    """The preprocessed image, and its Grad-CAM for the predicted (or the target) class overlaid, as a PNG."""
    x = ck.preprocess(read_image(image))
    c = None
    if target is not None:
        c = ck.classes.index(target) if target in ck.classes else int(target) if target.isdigit() else None
        if c is None or not 0 <= c < len(ck.classes):
            raise ValueError(f"target={target!r} is neither a class name nor an index < {len(ck.classes)}; "
                             f"classes: {ck.classes[:10]}")
    cam, c, p, name = grad_cam(ck, x, layer, c)
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax_img, ax_cam = fig.subplots(1, 2)
    img = ck.denormalize(x[None])[0]
    for ax in (ax_img, ax_cam):
        show(ax, img)
        ax.set_axis_off()
    ax_cam.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax_img.set_title(image.name, fontsize=9)
    ax_cam.set_title(f"Grad-CAM of {ck.classes[c]!r} ({p:.1%}) at {name}", fontsize=9)
    save(fig, out)
    return cam


@torch.no_grad()
def confusion(ck: Checkpoint, out: Path, limit: int | None = None) -> torch.Tensor:
    """K x K counts over the test set (row: true class, column: predicted), as a PNG of the row-normalized matrix and
    a CSV of the counts beside it. Returns the counts."""
    k = len(ck.classes)
    counts = torch.zeros(k * k, dtype=torch.long)
    for x, y in eval_batches(ck, limit):
        counts += torch.bincount((y * k + ck.model(x).argmax(-1)).cpu(), minlength=k * k)
    counts = counts.view(k, k)
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    fig = Figure(figsize=(2 + 0.45 * min(k, 40), 1.5 + 0.45 * min(k, 40)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    if k <= 50:
        ax.set_xticks(range(k), ck.classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), ck.classes, fontsize=8)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(counts.sum())
    ax.set_title(f"{total} test images, top-1 error {1 - counts.trace() / max(total, 1):.2%}")
    save(fig, out)
    rows = ["true\\predicted," + ",".join(ck.classes)]
    rows += [f"{ck.classes[i]}," + ",".join(str(int(v)) for v in counts[i]) for i in range(k)]
    out.with_suffix(".csv").write_text("\n".join(rows) + "\n")
    return counts


def show(ax, img: torch.Tensor) -> None:
    """A 0-1 C x H x W image on a matplotlib axis."""
    hwc = img.permute(1, 2, 0).numpy()
    ax.imshow(hwc[..., 0] if hwc.shape[-1] == 1 else hwc, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest" if max(hwc.shape[:2]) < 64 else "antialiased")


def save(fig: Figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def run(cfg: DictConfig, state: dict) -> None:
    what = cfg.what
    if what not in WHAT or (what == "gradcam" and not cfg.image):
        raise ValueError(f"what={what!r}: must be one of {WHAT}" if what not in WHAT else
                         "what=gradcam needs image=<file>")
    ck = from_config(cfg, state, cfg.device)
    out = Path(cfg.out or f"{what}.png").expanduser()
    limit = cfg.limit
    if what == "filters":
        grid = filters(ck, out)
        print(f"{first_conv(ck.model).weight.shape[0]} first-layer kernels ({tuple(grid.shape)} grid) -> {out}")
    elif what == "top9":
        name, v = top9(ck, out, cfg.layer, cfg.channel, limit)
        print(f"{name} channel {cfg.channel}: top activations {[round(float(a), 3) for a in v]} -> {out}")
    elif what == "gradcam":
        target = None if cfg.target is None else str(cfg.target)  # target=3 parses as an int: a class index
        gradcam(ck, Path(cfg.image).expanduser(), out, cfg.layer, target)
        print(f"Grad-CAM -> {out}")
    else:
        counts = confusion(ck, out, limit)
        off = counts.clone().fill_diagonal_(0)
        pairs = [(int(off.flatten()[i]), divmod(int(i), len(ck.classes))) for i in off.flatten().topk(5).indices]
        print(f"top-1 error {1 - counts.trace() / counts.sum():.4f} on {int(counts.sum())} test images; most confused: "
              + ", ".join(f"{ck.classes[t]} -> {ck.classes[p]} ({n})" for n, (t, p) in pairs if n))
        print(f"-> {out} and {out.with_suffix('.csv')}")


def main(argv: Sequence[str] | None = None) -> None:
    cli.main("visualize", run, __doc__, argv)


if __name__ == "__main__":
    main()
