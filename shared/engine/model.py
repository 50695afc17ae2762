"""The networks: a backbone, a CenterNet-style detector head and a classifier head.

Sized for a couple of CPU cores: a strided trunk down to 1/16 with a light top-down path back to 1/4,
where the detector predicts per-class centre heatmaps, box sizes and sub-cell offsets. The classifier
pools the deepest features. The backbone is the small one here, trained from scratch, or, as an
option, an ImageNet-pretrained MobileNetV2 (shared.engine.mobilenet); its weights are read from disk
only when a model is built for training, since a checkpoint holds every weight. A checkpoint is a
plain dict of tensors and primitives, so it loads with `torch.load(weights_only=True)`; one this
version cannot use is a ValueError that says why and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from shared.atomic_file import write_atomically
from shared.engine import mobilenet

CHECKPOINT_FORMAT = "local-engine-checkpoint/1"  # a config key with a default may be added; else bump it
BACKBONES = ("scratch", "mobilenet_v2")  # shared.config.ENGINE_BACKBONES (torch-free) names the same
HEATMAP_PRIOR = 0.05  # initial heatmap confidence; keeps the focal loss sane in the first steps
CHANNELS_LAST = torch.channels_last  # about 30% faster convolutions on CPU (oneDNN) for this network


@dataclass(frozen=True)
class ModelConfig:
    task: str  # a shared.domain.model_types.Task value
    num_classes: int
    input_size: int = 160
    width: int = 32  # channels at stride 2; deeper stages widen from it (mobilenet_v2: only the detector's neck)
    backbone: str = "scratch"  # or mobilenet_v2 (ImageNet-pretrained); a checkpoint without the key is scratch

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {', '.join(BACKBONES)}")

    @property
    def is_detection(self) -> bool:
        return self.task == "object_detection"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Returns features at strides 4, 8 and 16."""

    def __init__(self, width: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = width, width * 3 // 2, width * 2, width * 3
        self.stem = nn.Sequential(_conv(3, c1, 2), _conv(c1, c2, 2))
        self.down8 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3))
        self.down16 = nn.Sequential(_conv(c3, c4, 2), _conv(c4, c4), _conv(c4, c4))
        self.channels = (c2, c3, c4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s4 = self.stem(x)
        s8 = self.down8(s4)
        s16 = self.down16(s8)
        return s4, s8, s16


class Detector(nn.Module):
    """Outputs (heatmap logits [B,C,H,W], box size [B,2,H,W] in cells, centre offset [B,2,H,W])."""

    stride = 4

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = _backbone(config, mobilenet.DETECTOR_TAPS)
        c4, c8, c16 = self.backbone.channels
        # the neck's widths follow `width`; where the backbone's own differ (mobilenet_v2: 24 and 32,
        # thin for a stride-4 head) a 1x1 projection adapts them. The scratch backbone's match, so
        # these are identities and its checkpoints keep their keys.
        n4, n8 = _neck_channels(config)
        self.skip4 = nn.Identity() if c4 == n4 else nn.Conv2d(c4, n4, 1)
        self.skip8 = nn.Identity() if c8 == n8 else nn.Conv2d(c8, n8, 1)
        self.lateral16 = nn.Conv2d(c16, n8, 1)
        self.fuse8 = _conv(n8, n8)
        self.lateral8 = nn.Conv2d(n8, n4, 1)
        self.fuse4 = _conv(n4, n4)
        self.head = _conv(n4, n4)
        self.heatmap = nn.Conv2d(n4, config.num_classes, 1)
        self.box = nn.Conv2d(n4, 4, 1)
        assert self.heatmap.bias is not None  # Conv2d has a bias unless built with bias=False
        nn.init.constant_(self.heatmap.bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s4, s8, s16 = self.backbone(x)
        s4, s8 = self.skip4(s4), self.skip8(s8)
        p8 = self.fuse8(s8 + F.interpolate(self.lateral16(s16), size=s8.shape[-2:], mode="nearest"))
        p4 = self.fuse4(s4 + F.interpolate(self.lateral8(p8), size=s4.shape[-2:], mode="nearest"))
        h = self.head(p4)
        box = self.box(h)
        return self.heatmap(h), box[:, :2], box[:, 2:]


class Classifier(nn.Module):
    """Outputs class logits [B,C]; softmax or sigmoid is the caller's choice (single or multi label)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = _backbone(config, mobilenet.CLASSIFIER_TAPS)
        self.fc = nn.Linear(self.backbone.channels[-1], config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        deepest = self.backbone(x)[-1]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(deepest, 1), 1))


def _backbone(config: ModelConfig, taps: tuple[int, ...]) -> Backbone | mobilenet.MobileNetV2:
    """Scratch: strides 4, 8, 16 whatever the taps. mobilenet_v2: the given blocks' outputs."""
    return Backbone(config.width) if config.backbone == "scratch" else mobilenet.MobileNetV2(taps)


def _neck_channels(config: ModelConfig) -> tuple[int, int]:
    """The detector's channels at strides 4 and 8: the scratch backbone's own there."""
    return config.width * 3 // 2, config.width * 2


def build_model(config: ModelConfig, *, pretrained: bool = False) -> nn.Module:
    """`pretrained`: start the backbone from its ImageNet weights (mobilenet_v2; training only). The
    weights file's problems are ValueErrors, never a silent start from random weights."""
    model = Detector(config) if config.is_detection else Classifier(config)
    if pretrained and isinstance(model.backbone, mobilenet.MobileNetV2):
        mobilenet.load_imagenet_weights(model.backbone)
    return model


def save_checkpoint(path: Path, model: nn.Module, config: ModelConfig, classes: list[str], **extra: Any) -> None:
    """Writes the checkpoint atomically, so a reader never loads half a file."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config),
        "classes": list(classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda out: torch.save(payload, out))


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    classes: list[str]
    meta: dict[str, Any]


RETRAIN = "retrain the model with this version, or use the version that trained it"


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model a checkpoint holds; a file this version cannot use is a ValueError naming the reason
    (not a torch file, another format, a newer version's config, weights of another network)."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise  # a missing or unreadable file says so itself
    except Exception as exc:  # torch's unpickling and archive errors have no common type
        raise ValueError(f"{path} is not a local engine checkpoint: torch cannot read it ({exc})") from exc
    if not isinstance(payload, Mapping) or not isinstance(payload.get("format"), str):
        raise ValueError(f"{path} is not a local engine checkpoint (no format recorded)")
    written = payload["format"]
    if written != CHECKPOINT_FORMAT:
        if written.startswith(CHECKPOINT_FORMAT.split("/")[0] + "/"):
            raise ValueError(
                f"{path} is a checkpoint of format {written}, this version reads {CHECKPOINT_FORMAT}: {RETRAIN}"
            )
        raise ValueError(f"{path} is not a local engine checkpoint (format {written!r})")
    config = _config(path, payload.get("config"))
    classes = payload.get("classes")
    if not isinstance(classes, list) or len(classes) != config.num_classes:
        raise ValueError(f"{path} does not list its model's {config.num_classes} classes: {RETRAIN}")
    state = payload.get("state_dict")
    model = build_model(config)
    problems = mobilenet.state_dict_problems(model.state_dict(), state if isinstance(state, Mapping) else {})
    if problems:
        raise ValueError(
            f"{path}: its weights do not fit this version's {config.backbone} {config.task} network "
            f"({'; '.join(problems)}): {RETRAIN}"
        )
    assert isinstance(state, Mapping)
    model.load_state_dict(state)
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ("format", "config", "classes", "state_dict")}
    return LoadedModel(model, config, list(classes), meta)


def _config(path: Path, raw: object) -> ModelConfig:
    """A checkpoint's ModelConfig; keys this version lacks mean a newer one wrote it. Keys added since
    an older one wrote it take their defaults (no backbone: scratch)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} has no model config: {RETRAIN}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(
            f"{path} records model settings this version does not know ({', '.join(map(str, unknown))}), "
            f"so a newer version wrote it: use that version, or retrain with this one"
        )
    try:
        return ModelConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a model config this version cannot build ({exc}): {RETRAIN}") from exc
