"""The ResNeXt model zoo (arXiv:1611.05431): network, registry, complexity, form conversion,
pretrained weights."""

from .complexity import complexity, solve_bottleneck_width
from .convert import convert_form, copy_form
from .registry import (
                       create_model,
                       dataset_of,
                       list_models,
                       model_config,
                       model_entry,
                       registered_name,
)
from .resnext import (
                       FORMS,
                       BlurConv2d,
                       Bottleneck,
                       ResNeXt,
                       blurs,
                       check_args,
                       depth_of,
                       group_width,
)
from .weights import load_weights

__all__ = ["FORMS", "BlurConv2d", "Bottleneck", "ResNeXt", "blurs", "check_args", "complexity",
           "convert_form", "copy_form", "create_model", "dataset_of", "depth_of", "group_width",
           "list_models", "load_weights", "model_config", "model_entry", "registered_name",
           "solve_bottleneck_width"]
