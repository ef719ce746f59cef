"""The ResNeXt model zoo (arXiv:1611.05431): network, registry, complexity, form conversion,
pretrained weights."""

from .complexity import complexity, solve_bottleneck_width
from .convert import convert_form, copy_form
from .registry import (create_model, list_models, model_config, model_entry,
                       registered_name)
from .resnext import FORMS, BlurConv2d, Bottleneck, ResNeXt, blurs, depth_of, group_width
from .weights import load_weights

__all__ = ["FORMS", "BlurConv2d", "Bottleneck", "ResNeXt", "blurs", "complexity", "convert_form",
           "copy_form", "create_model", "depth_of", "group_width", "list_models", "load_weights",
           "model_config", "model_entry", "registered_name", "solve_bottleneck_width"]
