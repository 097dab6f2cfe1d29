"""The CIFAR ResNets of the ReLoss paper for mmpretrain: ``ResNetCIFARPaper``.

In a config::

    custom_imports = dict(imports=['reloss.mmpretrain_backbones'], allow_failed_imports=False)
    model = dict(backbone=dict(type='ResNetCIFARPaper', depth=56))

Importing this module registers it in mmpretrain's ``MODELS``. ``reloss.mmpretrain`` imports it,
so importing that one gives both the loss and the backbone.
"""
from __future__ import annotations

from ._mmpretrain_import import skip_multimodal_models_that_cannot_import

skip_multimodal_models_that_cannot_import()

from mmpretrain.models.backbones.resnet import BasicBlock  # noqa: E402
from mmpretrain.models.backbones.resnet_cifar import ResNet_CIFAR  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402


@MODELS.register_module()
class ResNetCIFARPaper(ResNet_CIFAR):
    """The CIFAR ResNets of He et al. (2016) used by the ReLoss paper: ResNet-20/32/44/56/110.

    Three stages of BasicBlocks with 16, 32 and 64 channels (6n + 2 layers; n = 9 for ResNet-56,
    18 for ResNet-110), a 3x3 stem and no max-pooling. Shortcuts that change shape are 1x1
    convolutions (He et al.'s option B), as in mmpretrain's other ResNets. mmpretrain's
    ``ResNet_CIFAR`` accepts depths 18-152 of the ImageNet family only.

    Args:
        depth (int): 20, 32, 44, 56 or 110.
        **kwargs: other arguments of mmpretrain's ``ResNet``.
    """

    arch_settings = {depth: (BasicBlock, ((depth - 2) // 6,) * 3)
                     for depth in (20, 32, 44, 56, 110)}

    def __init__(self, depth: int, **kwargs) -> None:
        if depth not in self.arch_settings:
            raise KeyError(f"'depth' should be one of {sorted(self.arch_settings)} but got "
                           f"{depth!r}")
        defaults = dict(stem_channels=16, base_channels=16, num_stages=3, strides=(1, 2, 2),
                        dilations=(1, 1, 1), out_indices=(2,))
        super().__init__(depth, **{**defaults, **kwargs})
