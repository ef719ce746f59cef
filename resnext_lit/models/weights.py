"""Pretrained weights into any registered network: torchvision's, ours, or a Lightning checkpoint's.

    python -m resnext_lit validate --config configs/imagenet_paper.yaml \\
        --config configs/eval/torchvision.yaml --model.weights resnext50_32x4d-7cdf4587.pth
    >>> load_weights(create_model("resnext50_32x4d", form="a"), "resnext50_32x4d-7cdf4587.pth")

A file is read with `torch.load(weights_only=True)` (tensors only, no pickled code) and is one of
- a state dict with torchvision's names, e.g. `torch.save(torchvision.models.resnext50_32x4d()
  .state_dict(), f)`: form (c) keeps those names (`resnext_lit.models.resnext`);
- ours, `ResNeXtModule.model.state_dict()`, in any form: (a) and (b) are told by their keys;
- a Lightning checkpoint, or a `ResNeXtModule.state_dict()` (keys `model.*`): its EMA copy
  (`ema.module.*`, see `ResNeXtModule`'s `ema_decay`) when it has one, since those are the
  weights the run validated and reported; otherwise its `model.*` weights.
Weights load strictly into the network of their own form, which is then converted into the
requested one (`convert.copy_form`): the forms are one function (arXiv:1611.05431 Sec. 3.3), so
form (a) computes what torchvision's grouped convs compute.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import UserError
from .convert import copy_form
from .resnext import ResNeXt


def load_failure(err: BaseException) -> tuple[str | None, str]:
    """Why `torch.load` failed, in one line each: (the pickled global weights_only refused, or
    None; the cause without torch's paragraph of advice)."""
    text = " ".join(str(err).split())
    unsafe = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if unsafe:
        return unsafe.group(0), text
    cause = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    return None, (cause.group(1) if cause else text.split(". ")[0])[:160]


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], str]:
    """The network tensors in `path` and what kind of file held them; one-line UserErrors."""
    if not Path(path).is_file():
        raise UserError(f"weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        unsafe, reason = load_failure(err)
        if unsafe:  # e.g. torchvision's reference checkpoints pickle their argparse Namespace
            raise UserError(f"weights {path} holds Python objects besides tensors "
                            f"({unsafe}); save its state_dict() alone") from None
        raise UserError(f"weights {path} is not a readable PyTorch file (truncated or corrupt?)"
                        f": {reason}") from None
    module = False  # `ResNeXtModule.state_dict()`: the network under `model.` (and `ema.`)
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        if not all(k.startswith(("model.", "ema.")) for k in obj):
            return obj, "state dict"
        state, module = obj, True
    else:
        state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"weights {path}: neither a state dict nor a Lightning checkpoint")
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
    net = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not net:
        raise UserError(f"weights {path}: a Lightning checkpoint without `model.*` weights "
                        f"(not a resnext_lit checkpoint?)")
    kind = "the LightningModule's state dict" if module else "Lightning checkpoint"
    return net, kind + (", EMA weights" if prefix == "ema.module." else "")


def state_form(state: dict[str, torch.Tensor]) -> str:
    """The block form of a state dict: (a) has a conv3 per path, (b) paths and one conv3, (c)
    grouped convs and no paths (torchvision's layout)."""
    if any(".paths." in k and k.endswith(".conv3.weight") for k in state):
        return "a"
    return "b" if any(".paths." in k for k in state) else "c"


def check_fits(state: dict[str, torch.Tensor], model: ResNeXt, path, name: str) -> None:
    """One line naming the first missing or unexpected key, or the first shape that differs."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UserError(f"weights {path} do not fit {name}: {first} ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected keys)")
    for key, tensor in want.items():
        if state[key].shape != tensor.shape:
            raise UserError(f"weights {path}: {key} is {list(state[key].shape)} but {name} has "
                            f"{list(tensor.shape)}")


def load_weights(model: ResNeXt, path, name: str = "the network") -> str:
    """Load the file `path` strictly into `model` (any form); `name` (the arch) is for errors.

    Returns one line saying what was loaded, for the log.
    """
    state, kind = read_state_dict(path)
    form, want = state_form(state), model.config["form"]
    source = model if form == want else ResNeXt(**{**model.config, "form": form})
    check_fits(state, source, path, name)  # before torch's own strict check: one line, not a page
    source.load_state_dict(state)
    if source is not model:
        copy_form(source, model)
    converted = f", converted from form ({form}) to ({want})" if source is not model else ""
    return f"weights {path} ({kind}) loaded into {name}{converted}"
