"""The ResNeXt model zoo (arXiv:1611.05431): network, registry, complexity, form conversion,
pretrained weights."""

import importlib

# Each public name -> the module that defines it, imported on first use: the tools that read
# only the registry (`summary`, `table`, `models --help`) then start without importing torch.
_WHERE = {
    "complexity": "flops", "solve_bottleneck_width": "flops",
    "convert_form": "convert", "copy_form": "convert",
    "create_model": "registry", "dataset_of": "registry", "list_models": "registry",
    "model_config": "registry", "model_entry": "registry", "registered_name": "registry",
    "FORMS": "resnext", "BlurConv2d": "resnext", "Bottleneck": "resnext", "ResNeXt": "resnext",
    "blurs": "resnext", "check_args": "resnext", "depth_of": "resnext", "group_width": "resnext",
    "load_weights": "weights",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
