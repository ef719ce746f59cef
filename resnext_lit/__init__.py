"""resnext_lit: ResNeXt (Xie et al., CVPR 2017, arXiv:1611.05431) on PyTorch Lightning."""

__version__ = "0.1.0"
