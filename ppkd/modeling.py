"""ppdet components ppkd adds, registered for configs like ppdet's own."""
from ppdet.core.workspace import register, serializable
from ppdet.modeling.backbones.vgg import VGG

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
