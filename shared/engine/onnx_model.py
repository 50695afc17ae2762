"""The trained network as an ONNX file, and an onnxruntime session that runs it in the network's place.

Export uses torch's `torch.export`-based exporter (`torch.onnx.export(..., dynamo=True)`, which needs
onnxscript): it is torch's default and maintained one, while the TorchScript exporter (`dynamo=False`)
warns that it is deprecated and will be removed. It traces the module itself, so any network
`build_model` makes (any backbone) exports without a hand-built graph. The batch axis is dynamic; the
image size is fixed by the model's config. Each export is checked against the eager module before it
is written, so a file that disagrees with the checkpoint is never left behind.

The file's input is `pixels`, float [B,3,S,S], normalized as `shared.engine.augment.normalize` does;
its outputs are those of the module: `heatmap`, `box_size`, `offset` for a detector, `logits` for a
classifier. Its metadata holds the task, the classes (JSON) and the normalization, so the file alone
is enough to use the model elsewhere.

Which runtime a prediction job uses (`runtime` of `PredictionJob`):
- `torch`: the eager module.
- `onnx`: this session; a missing or unreadable file fails the job, naming the file.
- `auto` (default): `onnx` on CPU when the file is there and loads, else `torch`, because
  onnxruntime was faster in every measurement: on the 2-core dev machine, `python -m
  bench.engine_bench --runtimes-only --threads 2` (the demo detector: input 160, width 32, 3 classes,
  batch 64, 2 threads on each side, network alone), four runs while other work shared the cores
  (load 1.4-2.8): eager torch 111-202 images/s, onnxruntime 163-336 images/s, ratio 1.27-1.71.
  On CUDA it stays `torch`: only onnxruntime's CPU execution provider is installed, and the GPU
  beats it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from shared.atomic_file import write_bytes_atomically
from shared.engine.augment import MEAN, STD
from shared.engine.model import LoadedModel, ModelConfig, load_checkpoint

log = logging.getLogger(__name__)

INPUT = "pixels"
DETECTOR_OUTPUTS = ("heatmap", "box_size", "offset")
CLASSIFIER_OUTPUTS = ("logits",)
TOLERANCE = 1e-4  # the largest difference from the eager module an exported file may show (abs and rel)
RUNTIMES = ("auto", "torch", "onnx")
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
_CHECK_BATCH = 3  # not the batch traced with (2): the check also proves the batch axis is dynamic


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keeps the exporter's own noise out of the job log: torch's deprecation warnings inside it, and a
    warning per torchvision operator it cannot register because torchvision is not installed."""
    registration = logging.getLogger(_REGISTRATION_LOGGER)
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def output_names(config: ModelConfig) -> tuple[str, ...]:
    return DETECTOR_OUTPUTS if config.is_detection else CLASSIFIER_OUTPUTS


def _outputs(result: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (result,) if isinstance(result, Tensor) else tuple(result)


def export_onnx(loaded: LoadedModel, path: Path) -> None:
    """Writes `loaded`'s network to `path` as ONNX (atomically), after checking it against the module.

    Exports a CPU copy in eval mode and in the default memory format, so the caller's module is left
    as it was. Raises if the exporter fails or the exported graph disagrees with the module."""
    config = loaded.config
    module: nn.Module = (
        # Module.to accepts memory_format (for its 4-D and 5-D tensors); torch's overloads of it omit that
        copy.deepcopy(loaded.model).to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    )
    example = torch.zeros(2, 3, config.input_size, config.input_size)
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=list(output_names(config)),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    if program is None:  # only the TorchScript exporter writes to a file and returns nothing
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    for key, value in {
        "task": config.task,
        "classes": json.dumps(loaded.classes),
        "config": json.dumps(asdict(config)),
        "input": (
            f"{INPUT}: float [B,3,{config.input_size},{config.input_size}], RGB/255, minus {MEAN}, over {STD}; "
            "the picture scaled to fit, at the top-left, padded with zeros"
        ),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    _check(module, OnnxRunner(data, config, name=str(path)), config)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(path, data)


def export_checkpoint(
    checkpoint: Path, target: Path, *, passing: tuple[type[BaseException], ...] = ()
) -> dict[str, str]:
    """Exports a saved checkpoint to `target`: `{"onnx": target's name}`, or `{"onnx_error": why}` when
    the export fails. The checkpoint is saved first and a failed export fails nothing: the model is
    still usable (prediction then runs on torch), only not as ONNX. `passing`: exceptions that are not
    the export's failure and go through (the job process's SIGTERM)."""
    try:
        export_onnx(load_checkpoint(checkpoint), target)
    except passing:
        raise
    except Exception as exc:
        log.exception("ONNX export failed; the torch checkpoint %s stands", checkpoint.name)
        return {"onnx_error": f"{type(exc).__name__}: {exc}"[:1000]}
    return {"onnx": target.name}


@torch.no_grad()
def _check(module: nn.Module, runner: OnnxRunner, config: ModelConfig) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_CHECK_BATCH, 3, config.input_size, config.input_size, generator=gen)
    want = _outputs(module(x))
    got = _outputs(runner(x))
    for name, a, b in zip(output_names(config), want, got, strict=True):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE):
            diff = (a - b).abs().max().item() if a.shape == b.shape else f"shape {tuple(b.shape)}"
            raise ValueError(f"the exported {name} differs from the module's (max difference {diff})")


class OnnxRunner:
    """An onnxruntime session (CPU) standing in for the network: normalized float [B,3,S,S] in, the
    module's outputs out as CPU tensors (a tuple for a detector, one tensor for a classifier)."""

    def __init__(self, model: Path | bytes, config: ModelConfig, *, threads: int | None = None, name: str = "") -> None:
        """`model` is the file (or its bytes); `threads` defaults to torch's, so both runtimes get the
        same share of the machine. A missing, unreadable or mismatched file raises, naming it."""
        self.name = name or (str(model) if isinstance(model, Path) else "(in memory)")
        self.config = config
        if isinstance(model, Path) and not model.is_file():
            raise FileNotFoundError(f"the ONNX model {model} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # waiting threads sleep instead of spinning, as the job processes ask of OpenMP (OMP_WAIT_POLICY)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: the job log is the user's
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ValueError(f"the ONNX model {self.name} cannot be loaded: {exc}") from exc
        inputs = [(i.name, i.shape[1:]) for i in self.session.get_inputs()]
        outputs = [(o.name, o.shape[1]) for o in self.session.get_outputs()]
        size, classes = config.input_size, config.num_classes
        expected = list(zip(output_names(config), (classes, 2, 2), strict=False))
        if inputs != [(INPUT, [3, size, size])] or outputs != expected:
            raise ValueError(
                f"the ONNX model {self.name} does not fit the checkpoint: inputs {inputs}, outputs {outputs}; "
                f"expected {INPUT} [3, {size}, {size}] and {expected} (name, channels)"
            )

    def __call__(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        # NCHW and contiguous, whatever memory format the caller built x in
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        outs = tuple(torch.from_numpy(o) for o in self.session.run(None, {INPUT: array}))
        return outs if self.config.is_detection else outs[0]


def runner_for(loaded: LoadedModel, onnx_path: Path, runtime: str, device: torch.device) -> OnnxRunner | None:
    """The ONNX runner a prediction job uses, or None for the eager module (see the module docstring).

    `onnx` never falls back: its file must be there and load. `auto` uses it only on CPU, and takes
    the eager module when the file is missing or does not load, saying why in the log."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return None
    if runtime == "onnx":
        if device.type != "cpu":
            log.warning("runtime onnx on %s: onnxruntime runs on the CPU here", device)
        return OnnxRunner(onnx_path, loaded.config)
    if not onnx_path.is_file():
        log.info("no %s: predicting with torch", onnx_path)
        return None
    try:
        return OnnxRunner(onnx_path, loaded.config)
    except ValueError as exc:
        log.warning("%s; predicting with torch", exc)
        return None
