"""ppdet components ppkd adds, registered for configs like ppdet's own."""
from ppdet.core.workspace import register, serializable
from ppdet.modeling.backbones.mobilenet_v1 import MobileNet
from ppdet.modeling.backbones.vgg import VGG
from ppdet.modeling.shape_spec import ShapeSpec

# fc7 (stride 16) then five 3×3 stride-2 blocks: 19, 10, 5, 3, 2, 1 cells at 300 px, SSD-MobileNetV1's grid.
STUDENT_GRID_BLOCKS = [[256, 512, 1, 2, 3], [128, 256, 1, 2, 3], [128, 256, 1, 2, 3], [64, 128, 1, 2, 3],
                       [64, 128, 1, 2, 3]]


@register
@serializable
class VGGFromFC7(VGG):
    """ppdet's VGG without its conv4_3 output: its levels start at fc7, so
    with stride-2 extra blocks they fall on SSD-MobileNetV1's grid and an
    SSD head with the student's prior settings gives the student's priors
    — a VGG teacher that SSD distillation can compare prior by prior. Its
    parameters keep VGG's names, so a VGG16-SSD's weights load into it
    (`pretrain_weights`) for fine-tuning."""

    def __init__(self, depth=16, extra_block_filters=STUDENT_GRID_BLOCKS):
        super().__init__(depth=depth, normalizations=[-1] * (len(extra_block_filters) + 2),
                         extra_block_filters=extra_block_filters)

    def forward(self, inputs):
        return super().forward(inputs)[1:]

    @property
    def out_shape(self):
        return super().out_shape[1:]


# The stride of each of MobileNetV1's depthwise-separable blocks' outputs (ppdet's `feature_maps` index).
MOBILENET_BLOCK_STRIDES = {1: 2, 2: 4, 3: 4, 4: 8, 5: 8, **{i: 16 for i in range(6, 12)}, 12: 32, 13: 32}


@register
@serializable
class MobileNetForFPN(MobileNet):
    """ppdet's MobileNetV1 with the strides an FPN needs (ppdet's gives its
    outputs' channels only); by default the last block of strides 4, 8,
    16 and 32, a Faster R-CNN FPN backbone much lighter than ResNet18."""

    def __init__(self, norm_type='bn', norm_decay=0., conv_decay=0., scale=1, conv_learning_rate=1.0,
                 feature_maps=[3, 5, 11, 13]):
        unknown = [i for i in feature_maps if i not in MOBILENET_BLOCK_STRIDES]
        if unknown:
            raise ValueError(f'MobileNetForFPN.feature_maps: no block {unknown}; blocks are 1-13')
        super().__init__(norm_type=norm_type, norm_decay=norm_decay, conv_decay=conv_decay, scale=scale,
                         conv_learning_rate=conv_learning_rate, feature_maps=feature_maps)

    @property
    def out_shape(self):
        return [ShapeSpec(channels=c, stride=MOBILENET_BLOCK_STRIDES[i])
                for c, i in zip(self._out_channels, self.feature_maps)]
