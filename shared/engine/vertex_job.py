"""The engine as a Vertex AI custom job: `python -m shared.engine.vertex_job train|predict ...`.

Vertex installs the engine package (scripts/build_engine_package.py) into a prebuilt container and runs
this module with the job's arguments, setting `AIP_MODEL_DIR` (`<baseOutputDirectory>/model/`) among
others. It is the local engine's own code, only with its files in Cloud Storage instead of a job folder:

- `train --import-uri gs://... --task ...` trains with `shared.engine.train.train` on the ETL's
  import JSONL (a `*` in the URI reads every chunk, as Vertex's import does) and writes `model.pt`,
  `model.onnx` (when the export works) and `summary.json` into `--model-dir`, by default
  `$AIP_MODEL_DIR`. `summary.json` is written last: once it is there the model dir is whole.
- `predict --model-dir gs://... --instances-uri gs://... --output-dir gs://...` runs
  `shared.engine.predict.run_batch_prediction`, which writes `predictions_00001.jsonl`... and
  `errors_00001.jsonl`... into the output dir, the files AutoML's batch prediction writes, so the
  chain's inference reads both alike.

Both use CUDA when torch sees it (`--device auto`). `AIP_CHECKPOINT_DIR` and `AIP_TENSORBOARD_LOG_DIR`
are not used: training is short and keeps no intermediate checkpoints or TensorBoard logs. A problem
the caller can fix (a missing import file or model, a bad argument) ends the process with exit code 1
and one `error: ...` line on stderr saying what to fix; argument errors exit with 2. Progress goes to
stdout. `--bucket-folder NAME=DIR` makes a local folder stand in for `gs://NAME` (local runs, tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from shared.domain.model_types import Task
from shared.store.port import NotFound, split_gs_uri

if TYPE_CHECKING:
    import torch

    from shared.engine.uri_store import UriStore

log = logging.getLogger("shared.engine.vertex_job")

MODEL_DIR_ENV = "AIP_MODEL_DIR"  # set by Vertex when the CustomJob has a baseOutputDirectory
MODEL_FILE = "model.pt"  # the names of the local engine's job folder (shared.engine.job_folders)
ONNX_FILE = "model.onnx"
SUMMARY_FILE = "summary.json"
TASKS = tuple(task.value for task in Task)
BACKBONES = ("auto", "scratch", "mobilenet_v2")  # shared.engine.model.BACKBONES and auto
RUNTIMES = ("auto", "torch", "onnx")  # shared.engine.onnx_model.RUNTIMES
DEFAULT_STEPS = 500  # as the local engine's LOCAL_ENGINE_STEPS
DEFAULT_CONFIDENCE_THRESHOLD = 0.3  # as the chain's PREDICT_CONFIDENCE_THRESHOLD
DEFAULT_MAX_PREDICTIONS = 100  # as the chain's PREDICT_MAX_PREDICTIONS
PROGRESS_LOG_S = 10.0
WEIGHTS_FIX = (
    "build the engine package with `python scripts/build_engine_package.py --with-mobilenet-weights`, "
    "or pass --backbone scratch"
)


class JobError(Exception):
    """Something the caller can fix; the message says what, in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as every other error here (argparse's usage block would bury it in the job log)."""
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], not {text}")
    return value


def _bucket_folder(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, not {text!r}")
    return name, Path(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m shared.engine.vertex_job", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        command.add_argument("--threads", type=_positive_int, help="CPU threads (default: every core)")
        command.add_argument(
            "--bucket-folder",
            type=_bucket_folder,
            action="append",
            default=[],
            metavar="NAME=DIR",
            help="read and write gs://NAME/... in the local folder DIR instead (local runs, tests)",
        )

    train = commands.add_parser("train", help="train on an import JSONL; write the model into the model dir")
    train.add_argument("--import-uri", required=True, help="the import JSONL (gs://...; a * reads every chunk)")
    train.add_argument("--task", required=True, choices=TASKS)
    train.add_argument("--model-dir", help=f"where the model goes (gs://...; default: ${MODEL_DIR_ENV})")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive_int, help=f"train exactly this many steps (default {DEFAULT_STEPS})")
    budget.add_argument("--train-seconds", type=_positive_float, help="train for this wall time instead")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--learning-rate", type=_positive_float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--input-size", type=_positive_int, help="the model's square input (default: by device)")
    train.add_argument("--width", type=_positive_int)
    train.add_argument(
        "--backbone", choices=BACKBONES, default="auto", help="auto: scratch on CPU, mobilenet_v2 on CUDA"
    )
    train.add_argument("--cache-bytes", type=_positive_int, help="decoded images kept in memory")
    train.add_argument("--display-name", default="custom-model")
    common(train)
    train.set_defaults(run=run_training)

    predict = commands.add_parser("predict", help="batch prediction: write Vertex-format prediction files")
    predict.add_argument("--model-dir", required=True, help="a training job's model dir (gs://...)")
    predict.add_argument("--instances-uri", required=True, help='the instances JSONL ({"content": gs uri, ...})')
    predict.add_argument("--output-dir", required=True, help="where predictions_*.jsonl go (gs://...)")
    predict.add_argument("--task", choices=TASKS, help="refuse a model trained for another task")
    predict.add_argument("--confidence-threshold", type=_unit, default=DEFAULT_CONFIDENCE_THRESHOLD)
    predict.add_argument("--max-predictions", type=_positive_int, default=DEFAULT_MAX_PREDICTIONS)
    predict.add_argument("--batch-size", type=_positive_int)
    predict.add_argument("--lines-per-file", type=_positive_int)
    predict.add_argument("--class-agnostic-nms", action=argparse.BooleanOptionalAction)
    predict.add_argument("--runtime", choices=RUNTIMES)
    common(predict)
    predict.set_defaults(run=run_prediction)
    return parser


def _dir_uri(uri: str, flag: str) -> str:
    """A gs:// folder URI, ending in `/`; JobError naming the flag otherwise."""
    if not uri.startswith("gs://") or not uri[len("gs://") :].split("/", 1)[0]:
        raise JobError(f"{flag} must be a gs://bucket/folder URI, not {uri!r}")
    return uri if uri.endswith("/") else uri + "/"


def _file_uri(uri: str, flag: str) -> str:
    try:
        split_gs_uri(uri)
    except ValueError:
        raise JobError(f"{flag} must be a gs://bucket/object URI, not {uri!r}") from None
    return uri


def _store(args: argparse.Namespace) -> UriStore:
    from shared.engine.uri_store import UriStore

    return UriStore(dict(args.bucket_folder))


def _device(name: str) -> torch.device:
    from shared.engine.train import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise JobError(f"{exc}: run on a machine with a GPU, or pass --device auto or cpu") from None


def _throttled(what: str) -> Callable[[dict[str, object]], None]:
    """Logs the engine's progress reports at most every PROGRESS_LOG_S (it reports every second)."""
    last = [0.0]

    def report(progress: dict[str, object]) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_LOG_S:
            last[0] = now
            log.info("%s: %s", what, json.dumps(progress, sort_keys=True))

    return report


def _train_settings(args: argparse.Namespace) -> dict[str, object]:
    """The TrainSettings fields the arguments set; the rest keep the engine's defaults."""
    given = {
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "input_size": args.input_size,
        "width": args.width,
        "cache_bytes": args.cache_bytes,
    }
    budget: dict[str, object] = (
        {"train_seconds": args.train_seconds} if args.train_seconds else {"max_steps": args.steps or DEFAULT_STEPS}
    )
    return {k: v for k, v in given.items() if v is not None} | budget


def run_training(args: argparse.Namespace) -> dict[str, object]:
    from shared.engine import mobilenet
    from shared.engine.onnx_model import export_checkpoint
    from shared.engine.train import TrainSettings, backbone_for, configure_torch, train

    model_dir = args.model_dir or os.environ.get(MODEL_DIR_ENV)
    if not model_dir:
        raise JobError(
            f"no model dir: pass --model-dir gs://bucket/folder, or set {MODEL_DIR_ENV} (Vertex sets it when "
            "the CustomJob has a baseOutputDirectory)"
        )
    model_dir = _dir_uri(model_dir, "--model-dir" if args.model_dir else MODEL_DIR_ENV)
    import_uri = _file_uri(args.import_uri, "--import-uri")
    store = _store(args)
    if not store.exists(import_uri):
        raise JobError(f"the import file {import_uri} does not exist (--import-uri): run the ETL first, or fix the URI")
    device = _device(args.device)
    settings = TrainSettings(
        task=args.task,
        import_uri=import_uri,
        seed=args.seed,
        backbone=args.backbone,
        display_name=args.display_name,
        **_train_settings(args),  # type: ignore[arg-type]
    )
    if backbone_for(settings, device) == "mobilenet_v2":
        try:
            mobilenet.weights_file()
        except ValueError:
            raise JobError(
                f"the mobilenet_v2 backbone (what --backbone auto picks on {device.type}) needs torchvision's "
                f"ImageNet weights, which this installation lacks: {WEIGHTS_FIX}"
            ) from None
    configure_torch(args.threads)
    log.info("training %s on %s from %s into %s", args.task, device, import_uri, model_dir)
    with tempfile.TemporaryDirectory(prefix="vertex-job-") as tmp:
        checkpoint, onnx_file = Path(tmp) / MODEL_FILE, Path(tmp) / ONNX_FILE
        summary = train(settings, store, checkpoint, device=device, report=_throttled("training"))
        exported = export_checkpoint(checkpoint, onnx_file)
        if onnx_file.is_file():
            store.upload_file(model_dir + ONNX_FILE, str(onnx_file), content_type="application/octet-stream")
        store.upload_file(model_dir + MODEL_FILE, str(checkpoint), content_type="application/octet-stream")
    record: dict[str, object] = {
        "task": args.task,
        "import_uri": import_uri,
        "model_dir": model_dir,
        "model": MODEL_FILE,
        "device": str(device),
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "import_uri"},
        **summary,
        **exported,
    }
    store.write(model_dir + SUMMARY_FILE, json.dumps(record, indent=1).encode(), content_type="application/json")
    return record


def _download(store: UriStore, uri: str, path: Path) -> None:
    with store.open_read(uri) as source, open(path, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)


def run_prediction(args: argparse.Namespace) -> dict[str, object]:
    from shared.engine.model import load_checkpoint
    from shared.engine.onnx_model import runner_for
    from shared.engine.predict import PredictionJob, Predictor, run_batch_prediction
    from shared.engine.train import configure_torch

    model_dir = _dir_uri(args.model_dir, "--model-dir")
    instances_uri = _file_uri(args.instances_uri, "--instances-uri")
    output_dir = _dir_uri(args.output_dir, "--output-dir")
    store = _store(args)
    if not store.exists(model_dir + MODEL_FILE):
        raise JobError(
            f"{model_dir} holds no {MODEL_FILE} (--model-dir): point it at a finished training job's model dir "
            f"(its {MODEL_DIR_ENV})"
        )
    if not store.exists(instances_uri):
        raise JobError(f"the instances file {instances_uri} does not exist (--instances-uri)")
    device = _device(args.device)
    configure_torch(args.threads)
    given = {
        "batch_size": args.batch_size,
        "lines_per_file": args.lines_per_file,
        "class_agnostic_nms": args.class_agnostic_nms,
        "runtime": args.runtime,
    }
    job = PredictionJob(
        instances_uri=instances_uri,
        output_dir_uri=output_dir.rstrip("/"),
        confidence_threshold=args.confidence_threshold,
        max_predictions=args.max_predictions,
        **{k: v for k, v in given.items() if v is not None},
    )
    with tempfile.TemporaryDirectory(prefix="vertex-job-") as tmp:
        checkpoint, onnx_file = Path(tmp) / MODEL_FILE, Path(tmp) / ONNX_FILE
        _download(store, model_dir + MODEL_FILE, checkpoint)
        if store.exists(model_dir + ONNX_FILE):
            _download(store, model_dir + ONNX_FILE, onnx_file)
        try:
            loaded = load_checkpoint(checkpoint, device)
        except ValueError as exc:
            raise JobError(str(exc).replace(str(checkpoint), model_dir + MODEL_FILE)) from None
        if args.task and loaded.config.task != args.task:
            raise JobError(f"the model in {model_dir} was trained for {loaded.config.task}, not {args.task} (--task)")
        runner = runner_for(loaded, onnx_file, job.runtime, device)
        runtime = "torch" if runner is None else "onnx"
        log.info("predicting %s with %s on %s into %s", instances_uri, runtime, device, output_dir)
        summary = run_batch_prediction(Predictor(loaded, device, runner), store, job, _throttled("prediction"))
    return {"task": loaded.config.task, "device": str(device), "runtime": runtime, **summary}


def _one_line(text: str, limit: int = 2000) -> str:
    return " ".join(text.split())[:limit]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the engine's own progress at INFO; the libraries' (the ONNX exporter's passes) only when they warn
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("shared").setLevel(logging.INFO)
    from google.api_core import exceptions as gexc

    try:
        outcome = args.run(args)
    except JobError as exc:
        reason = str(exc)
    except NotFound as exc:
        reason = f"{exc.args[0] if exc.args else exc} does not exist"
    except (ValueError, FloatingPointError, OSError, gexc.GoogleAPICallError) as exc:
        # the engine's own ValueErrors say what is wrong (no training rows, weights missing, ...)
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
    except Exception as exc:
        traceback.print_exc()
        reason = f"unexpected {type(exc).__name__}: {exc}"
    else:
        print(json.dumps(outcome, sort_keys=True, default=str))
        return 0
    print(f"error: {_one_line(reason)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
