"""Export a trained checkpoint's network to TorchScript or ONNX, and check the export against the checkpoint.

    python -m cnnlab.export ckpt=<path> format=torchscript out=model.pt
    python -m cnnlab.export ckpt=<path> format=onnx out=model.onnx [batch=4] [rtol=1e-4] [atol=1e-4]

The exported network takes what cnnlab.predict feeds the model: N x C x H x W float images, preprocessed and
normalized as the checkpoint's eval data config says (any N); it returns N x K logits. The export is run on a sample
batch of that shape and its outputs compared with the checkpoint's; a difference beyond the tolerances raises.
The classes, mean, std and input shape travel with the file as one JSON object (metadata()): {"classes": [...],
"mean": [...], "std": [...], "input_shape": [C, H, W]}, TorchScript's extra file `cnnlab.json`, ONNX's metadata
property `cnnlab` (one json.loads of the string gives the object). The command line is Hydra's (cnnlab.cli): the
keys above are conf/export.yaml's, `--help` lists them. ONNX needs the `export` extra: pip install -e '.[export]'
(onnx, onnxscript, onnxruntime).
"""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from cnnlab import cli
from cnnlab.extras import require
from cnnlab.predict import Checkpoint, from_config

FORMATS = ("torchscript", "onnx")
METADATA_KEY = "cnnlab"  # the ONNX metadata property; TorchScript's extra file is cnnlab.json


def metadata(ck: Checkpoint) -> dict:
    """What a consumer of the exported file needs to preprocess images and name the outputs: mean and std per
    channel ([C], 0-1 scale), or per pixel ([C][H][W], He et al.'s mean image)."""
    mean, std = (t.flatten().tolist() if t.shape[1:] == (1, 1) else t.tolist() for t in (ck.mean, ck.std))
    return {"classes": ck.classes, "mean": mean, "std": std, "input_shape": list(ck.input_shape())}


def torchscript(ck: Checkpoint, x: torch.Tensor, out: Path):
    """Traced (the models' control flow depends only on training mode); returns a function running the saved file."""
    with torch.no_grad():
        traced = torch.jit.trace(ck.model, x)
    traced.save(str(out), _extra_files={"cnnlab.json": json.dumps(metadata(ck))})
    loaded = torch.jit.load(str(out), map_location="cpu")
    return lambda t: loaded(t).detach().numpy()


def onnx(ck: Checkpoint, x: torch.Tensor, out: Path):
    """torch.onnx's dynamo exporter, with a dynamic batch size; returns a function running the file in onnxruntime."""
    onnx_lib = require("onnx", "export", "format=onnx")
    onnxruntime = require("onnxruntime", "export", "format=onnx")
    require("onnxscript", "export", "format=onnx")  # torch.onnx's dynamo exporter

    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(ck.model, (x,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), dynamo=True, external_data=False)
    proto = onnx_lib.load(str(out))
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata(ck)))
    onnx_lib.save(proto, str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda t: session.run(None, {session.get_inputs()[0].name: t.numpy()})[0]


def export(ck: Checkpoint, fmt: str, out: Path, batch: int = 4, rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Write the export and check it on a sample batch (and on one image: the batch size is free); returns the
    largest absolute difference of the logits."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    ck.model.cpu().eval()
    x = torch.randn(batch, *ck.input_shape(), generator=torch.Generator().manual_seed(0))  # like normalized images
    out.parent.mkdir(parents=True, exist_ok=True)
    run = torchscript(ck, x, out) if fmt == "torchscript" else onnx(ck, x, out)
    worst = 0.0
    for sample in (x, x[:1]):
        with torch.no_grad():
            expected = ck.model(sample).numpy()
        got = run(sample)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
            diff = np.abs(got - expected).max() if got.shape == expected.shape else float("nan")
            raise AssertionError(f"the {fmt} export at {out} does not reproduce the checkpoint: logits of shape "
                                 f"{got.shape} vs {expected.shape}, largest difference {diff:.3g} "
                                 f"(rtol={rtol}, atol={atol})")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def run(cfg: DictConfig, state: dict) -> None:
    ck = from_config(cfg, state)
    out = Path(cfg.out).expanduser()
    worst = export(ck, cfg.format, out, cfg.batch, cfg.rtol, cfg.atol)
    print(f"{cfg.format} -> {out} ({out.stat().st_size / 1e6:.1f} MB); input N x "
          f"{' x '.join(map(str, ck.input_shape()))}, {len(ck.classes)} classes; outputs match the checkpoint "
          f"(largest logit difference {worst:.2g})")


def main(argv: Sequence[str] | None = None) -> None:
    cli.main("export", run, __doc__, argv)


if __name__ == "__main__":
    main()
