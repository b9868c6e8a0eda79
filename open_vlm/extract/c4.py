"""`resnet101_c4`: the bottom-up-attention detector (Anderson et al.'s Caffe Visual Genome Faster R-CNN, as ported
to detectron2 by py-bottom-up-attention) rebuilt from torchvision parts, so its 2048-d box features are the ones
pretrained LXMERT was trained on.

Layout: ResNet stem (Caffe max-pool: no padding, ceil mode) + res2..res4 with the stride in each block's 1x1 conv
(C4: stride 16, 1024 channels) → RPN (3x3 conv to 512, 12 anchors: sizes 64..512 x ratios 0.5, 1, 2) → RoI max
pooling to 14 x 14 on C4 → res5 without its stride and with dilated 3x3 convs (14 x 14, 2048 channels) → average
pool → 2048-d box feature → class scores (1600 Visual Genome classes + background). Pixels are BGR 0..255 minus
the Caffe mean; here the stem's first conv takes RGB (its input channels are flipped when weights are converted)
and the normalisation is folded into the transform's mean and std.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.ops import roi_pool

CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)
ANCHOR_SIZES = (64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
POOLED_SIZE = 14
C4_STRIDE = 16
DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class C4Backbone(nn.Module):
    """ResNet stem + res2..res4 (torchvision's `layer1`..`layer3`) with Caffe's max pool and strides."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        stem_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        parts = [("conv1", resnet.conv1), ("bn1", resnet.bn1), ("relu", resnet.relu), ("maxpool", stem_pool)]
        self.body = nn.Sequential(
            OrderedDict([*parts, *((f"layer{i}", getattr(resnet, f"layer{i}")) for i in (1, 2, 3))])
        )
        for layer in (self.body.layer2, self.body.layer3):
            stride_in_1x1(layer[0])
        self.out_channels = 1024

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(images))])


def stride_in_1x1(block: nn.Module) -> None:
    """Move a torchvision bottleneck's stride from its 3x3 conv to its 1x1 conv (the MSRA/Caffe ResNet)."""
    block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


class C4RPNHead(nn.Module):
    """3x3 conv to `hidden` channels, then objectness (A) and box deltas (4A) per location (detectron2's RPN head)."""

    def __init__(self, in_channels: int, hidden: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(hidden, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(hidden, num_anchors * 4, kernel_size=1)
        for conv in (self.conv, self.cls_logits, self.bbox_pred):  # detectron2's init (when no weights are loaded)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        hidden = [torch.relu(self.conv(f)) for f in features]
        return [self.cls_logits(h) for h in hidden], [self.bbox_pred(h) for h in hidden]


class C4RoIPool(nn.Module):
    """RoI max pooling (Caffe's ROIPooling) of the C4 map to `size` x `size`."""

    def __init__(self, size: int = POOLED_SIZE, stride: int = C4_STRIDE):
        super().__init__()
        self.size, self.scale = size, 1.0 / stride

    def forward(self, features, proposals: list[torch.Tensor], image_shapes) -> torch.Tensor:
        return roi_pool(features["0"], [p.float() for p in proposals], self.size, self.scale)


class Res5Head(nn.Module):
    """res5 (torchvision's `layer4`) without its stride, 3x3 convs dilated by 2, then an average pool: 2048-d."""

    def __init__(self, layer4: nn.Sequential):
        super().__init__()
        first = layer4[0]
        first.conv2.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        for block in layer4:
            block.conv2.padding, block.conv2.dilation = (2, 2), (2, 2)
        self.res5 = layer4

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.res5(pooled).mean(dim=(2, 3))


def build_c4_detector(depth: str, num_classes: int, rpn_hidden: int = 512, **kwargs) -> nn.Module:
    """A torchvision FasterRCNN in the bottom-up-attention layout (random init; frozen batch norm)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.ops import FrozenBatchNorm2d

    # Residual branches start at zero (random init only): activations stay finite through 30+ blocks.
    resnet = ResNet(Bottleneck, list(DEPTHS[depth]), norm_layer=FrozenBatchNorm2d, zero_init_residual=True)
    anchors = AnchorGenerator(sizes=(ANCHOR_SIZES,), aspect_ratios=(ASPECT_RATIOS,))
    # Caffe's input: BGR in 0..255 minus the mean (std 1), here for RGB in 0..1.
    mean = [c / 255.0 for c in reversed(CAFFE_MEAN_BGR)]
    model = FasterRCNN(
        C4Backbone(resnet),
        rpn_anchor_generator=anchors,
        rpn_head=C4RPNHead(1024, rpn_hidden, anchors.num_anchors_per_location()[0]),
        box_head=Res5Head(resnet.layer4),
        box_predictor=FastRCNNPredictor(2048, num_classes),
        image_mean=mean,
        image_std=[1.0 / 255.0] * 3,
        **kwargs,
    )
    model.roi_heads.box_roi_pool = C4RoIPool()  # FasterRCNN only accepts its own RoIAlign pooler as an argument
    return model
