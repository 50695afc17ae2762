"""The whole chain on one machine: six functions served by functions-framework on loopback.

    python -m shared.local_chain demo              # demo model run -> signed webhook -> ... -> report
    python -m shared.local_chain run --model-run ID  # a real Labelbox model run, trained on this machine
    python -m shared.local_chain serve             # just serve the functions, print their URLs

`demo` and `serve` use a model run folder (CHAIN_PLATFORM=local) and never see a Labelbox key from the
environment. `run` talks to Labelbox (CHAIN_PLATFORM=labelbox, with LABELBOX_API_KEY and optionally
LABELBOX_ENDPOINT / LABELBOX_REST_ENDPOINT from the environment) and keeps everything else here: the
folder store, the local engine (on the GPU when there is one, LOCAL_ENGINE_DEVICE) and the loopback
queue. No Google Cloud account is needed.

The local engine trains a fixed number of steps (LOCAL_ENGINE_STEPS, default 500), so two runs on any
machine give the same weights and metrics. Both commands take `--train-seconds N` to train for a wall
time instead (as LOCAL_ENGINE_TRAIN_SECONDS in the environment does).

`LocalChain` is also the harness of the end-to-end tests: it starts each function as its own process
(as Cloud Functions would run them), wires their URLs through the environment, signs webhooks with the
session's secret, and reads the run record and the local model run to follow progress.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from shared.config import DEFAULT_ENGINE_STEPS, ConfigError, Settings, load_settings

FUNCTIONS = ("models", "model_run", "etl", "train", "monitor", "inference")
ROOT = Path(__file__).resolve().parent.parent
TRAIN_SECONDS_VAR = "LOCAL_ENGINE_TRAIN_SECONDS"
STEPS_VAR = "LOCAL_ENGINE_STEPS"
DEMO_UNLABELED = 30  # the demo's rows nobody labeled yet: the chain ranks them for labeling
LABEL_NEXT_SHOWN = 5  # of the rows to label next, the summary prints this many (the report shows all)
DEMO_SHARD_ROWS = {"ETL_SHARD_ROWS": 100, "INFERENCE_SHARD_ROWS": 25}  # 300 rows: 3 ETL, 3 delivery shards
_TRAIN_SECONDS_RANGE = (1.0, 86_400.0)  # what shared.config accepts for LOCAL_ENGINE_TRAIN_SECONDS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(body: bytes, secret: str) -> dict[str, str]:
    """The headers Labelbox sends with a webhook signed with `secret`."""
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


PLATFORMS = ("local", "labelbox")  # the model runs LocalChain can train: a folder's, or Labelbox's


class LocalChain:
    """The six functions on this machine: folder store, local engine, loopback queue, and `platform`.

    With the local platform (the demo, the tests) any LABELBOX_* variable of the environment is left
    out, so a key in the user's shell never reaches a run that has no use for it. With `labelbox` they
    are passed on: the functions read the model run from Labelbox and write back to it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        platform: str = "local",
    ) -> None:
        if platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
        self.platform = platform
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir or self.data_dir / "logs")
        self.secret = secrets.token_hex(24)
        self.ports = {name: _free_port() for name in FUNCTIONS}
        self.urls = {name: f"http://127.0.0.1:{port}/" for name, port in self.ports.items()}
        dropped = ("WEBHOOK_SECRET",) if platform == "labelbox" else ("LABELBOX_", "WEBHOOK_SECRET")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(dropped)},
            "CHAIN_MODE": "local",
            "CHAIN_PLATFORM": platform,
            "CHAIN_STORE": "folder",
            "CHAIN_BACKEND": "local",
            "CHAIN_QUEUE": "loopback",
            "LOCAL_DATA_DIR": str(self.data_dir),
            "WEBHOOK_SECRET": self.secret,
            "PYTHONPATH": str(ROOT),
            **{f"{name.upper()}_URL": self.urls[name] for name in ("etl", "train", "monitor", "inference")},
            **(env or {}),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def check(self) -> Settings:
        """The functions' settings, loaded here first: a ConfigError (a missing API key, a bad value)
        names every problem before any process starts, instead of in six logs."""
        return load_settings(self.env)

    # -- processes -------------------------------------------------------------------------------------

    def start(self, names: tuple[str, ...] = FUNCTIONS) -> LocalChain:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process
            self.processes[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "functions_framework",
                    "--target",
                    name,
                    "--source",
                    str(ROOT / "functions" / name / "main.py"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.ports[name]),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for name in names:
            self._wait_ready(name)
        return self

    def _wait_ready(self, name: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"function {name} exited at start-up:\n{tail}")
            try:
                requests.request("OPTIONS", self.urls[name], timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"function {name} did not start listening within {timeout_s:.0f} s")

    def kill(self, name: str) -> None:
        """SIGKILLs a function's whole process group: the crash a re-run must recover from."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)

    def __enter__(self) -> LocalChain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to the chain --------------------------------------------------------------------------

    def webhook(
        self,
        model_run_id: str,
        model_type: str,
        *,
        model_id: str | None = None,
        force: bool = False,
        secret: str | None = None,
    ) -> requests.Response:
        payload: dict[str, Any] = {"modelRunId": model_run_id, "modelType": model_type}
        if model_id:
            payload["modelId"] = model_id
        if force:
            payload["force"] = True
        body = json.dumps(payload).encode()
        return requests.post(self.urls["model_run"], data=body, headers=sign(body, secret or self.secret), timeout=30)

    def call_stage(self, stage: str, run_id: str, **extra: Any) -> requests.Response:
        return requests.post(self.urls[stage], json={"run_id": run_id, **extra}, timeout=600)

    def run_record(self, run_id: str) -> dict[str, Any] | None:
        path = self.data_dir / "bucket" / "runs" / run_id / "run.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def model_run_dir(self, model_run_id: str) -> Path:
        return self.data_dir / "model_runs" / model_run_id

    def statuses(self, model_run_id: str) -> list[dict[str, Any]]:
        path = self.model_run_dir(model_run_id) / "status.ndjson"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def wait(self, run_id: str, *, until: Any = None, timeout_s: float = 600, progress: bool = False) -> dict[str, Any]:
        """Polls the run record until the run finishes (or `until(record)` is true); prints progress if asked."""
        deadline = time.monotonic() + timeout_s
        shown: set[str] = set()
        last_line = ""
        while time.monotonic() < deadline:
            record = self.run_record(run_id)
            if record:
                if progress:
                    last_line = _show_progress(record, shown, last_line)
                done = until(record) if until else record["status"] != "running"
                if done:
                    return record
            time.sleep(0.5)
        raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s")


def _show_progress(record: dict[str, Any], shown: set[str], last_line: str) -> str:
    for event in record["events"]:
        key = f"{event['at']}{event['stage']}{event['event']}"
        if key in shown or event["event"] in {"waiting", "handoff"}:
            continue
        shown.add(key)
        detail = event.get("detail") or {}
        text = ", ".join(f"{k}={v}" for k, v in detail.items() if k not in {"ref"})
        print(f"  {event['at'][11:19]}  {event['stage']:<9} {event['event']:<12} {text}"[:160], flush=True)
    running = [(n, s) for n, s in record["stages"].items() if s["progress"]]
    line = ""
    for name, stage in running:
        if stage["state"] == "running" or name == "monitor":
            p = stage["progress"]
            line = f"  ...       {name:<9} " + ", ".join(f"{k}={v}" for k, v in p.items())[:130]
    if line and line != last_line:
        print(line, flush=True)
    return line or last_line


def _print_result(chain: LocalChain, record: dict[str, Any], started: float) -> None:
    print(f"\nrun {record['run_id']}: {record['status'].upper()} in {time.monotonic() - started:.0f} s")
    if record["status"] != "complete":
        print(f"error: {record.get('error')}")
        return
    metrics = record.get("metrics", {})
    summary = metrics.get("summary", metrics)
    for key in ("map50", "map50_95", "precision", "recall", "f1", "best_f1", "best_f1_threshold", "accuracy"):
        if isinstance(summary.get(key), (int, float)):
            print(f"  {key:<18} {summary[key]:.4f}")
    for split, figures in sorted(summary.get("by_split", {}).items()):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if isinstance(v, float))
        print(f"  {split + ' split':<18} {shown}")
    report = record.get("artifacts", {}).get("report")
    if report:
        path = chain.data_dir / "bucket" / report.split("/", 3)[3]
        print(f"  report             {path}")
    print(f"  run record         {chain.data_dir / 'bucket' / 'runs' / record['run_id'] / 'run.json'}")
    if chain.platform == "labelbox":
        print(f"  Labelbox model run {record['model_run_id']} (predictions, metrics and status uploaded there)")
    else:
        print(f"  model run folder   {chain.model_run_dir(record['model_run_id'])}")
    label_next = metrics.get("label_next") or {}
    rows = label_next.get("rows") or []
    if rows:
        strategy = str(label_next.get("strategy", "")).replace("_", " ")
        sent = label_next.get("sent") or {}
        print(
            f"  label these next   {len(rows)} of {label_next.get('rows_ranked')} unlabeled or unassigned rows, "
            f"by {strategy}:"
        )
        for row in rows[:LABEL_NEXT_SHOWN]:
            flag = ", no detection" if row.get("no_detection") else ""
            print(f"    {row.get('global_key') or row['data_row_id']:<20} score {row['score']:.3f}{flag}")
        if sent:
            from shared.stages.label_next_send import shown as sent_line

            print(f"  sent to label      {sent_line(sent)}")


def _train_seconds(text: str) -> float:
    """Refused here rather than by every function at start-up, where it would only show in their logs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    low, high = _TRAIN_SECONDS_RANGE
    if not low <= value <= high:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} seconds, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Labelbox -> Vertex chain locally.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="create the demo model run and train it end to end")
    demo.add_argument("--data-dir", type=Path, default=ROOT / "var")
    demo.add_argument("--model-type", default="local_detector")
    demo.add_argument("--images", type=int, default=300)
    demo.add_argument(
        "--unlabeled", type=int, default=DEMO_UNLABELED, help="rows nobody labeled yet: predicted and ranked"
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--force", action="store_true", help="restart the run if it already finished")
    run = sub.add_parser(
        "run", help="train a Labelbox model run on this machine (needs LABELBOX_API_KEY, no Google Cloud)"
    )
    run.add_argument("--model-run", required=True, help="the Labelbox model run id")
    run.add_argument(
        "--model-type",
        default="local_detector",
        help="local_detector (boxes), local_single_label_classifier (radio) or local_multi_label_classifier",
    )
    run.add_argument("--data-dir", type=Path, default=ROOT / "var")
    run.add_argument("--force", action="store_true", help="restart the run if it already finished")
    run.add_argument("--timeout", type=float, default=86_400.0, help="seconds to follow the run (default a day)")
    serve = sub.add_parser("serve", help="serve the six functions until interrupted")
    serve.add_argument("--data-dir", type=Path, default=ROOT / "var")
    for command in (demo, run, serve):
        command.add_argument(
            "--train-seconds",
            type=_train_seconds,
            default=None,
            help=f"train for this wall time instead of a fixed number of steps (or set ${TRAIN_SECONDS_VAR})",
        )
    return parser.parse_args(argv)


def engine_env(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """What the functions get over the environment (which LocalChain passes on): a wall time asked
    for with the flag; otherwise nothing, so the environment's own settings (or the fixed steps) hold."""
    if args.train_seconds is not None:
        seconds = float(args.train_seconds)
        return {TRAIN_SECONDS_VAR: str(int(seconds)) if seconds.is_integer() else repr(seconds)}
    return {}


def training_budget(env: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """The engine's training budget in words, as the functions will read it."""
    merged = {**environ, **env}
    steps = merged.get(STEPS_VAR, "").strip()
    if steps:
        return f"{steps} steps (the same result on any machine)"
    seconds = merged.get(TRAIN_SECONDS_VAR, "").strip()
    if seconds:
        return f"{seconds} s of wall time (how many steps fit depends on the machine)"
    return f"{DEFAULT_ENGINE_STEPS} steps (the same result on any machine)"


def _checked(chain: LocalChain) -> bool:
    """Whether the functions would load their settings; if not, says why (a key is never in it)."""
    try:
        chain.check()
    except ConfigError as exc:
        print(f"cannot start the chain: {exc}", file=sys.stderr)
        if "LABELBOX_API_KEY" in str(exc):
            print("set LABELBOX_API_KEY (or LABELBOX_API_KEY_FILE) to a Labelbox API key", file=sys.stderr)
        return False
    return True


def _train(
    chain: LocalChain, model_run_id: str, model_type: str, *, force: bool, timeout_s: float, started: float
) -> int:
    """Sends the signed webhook Labelbox sends for "Train model", follows the run, prints its summary."""
    response = chain.webhook(model_run_id, model_type, force=force)
    print(f"webhook -> HTTP {response.status_code}: {response.json().get('message')}")
    if response.status_code >= 400:
        print(response.text)
        return 1
    try:
        record = chain.wait(model_run_id, timeout_s=timeout_s, progress=True)
    except TimeoutError as exc:
        print(f"\n{exc}; the same command again picks the run up where it is")
        return 1
    _print_result(chain, record, started)
    return 0 if record["status"] == "complete" else 1


def main(argv: list[str] | None = None) -> int:
    from shared.demo import _ids, create_demo_model_run, create_demo_project

    args = parse_args(argv)
    env = engine_env(args, os.environ)
    chain = LocalChain(args.data_dir, env=env, platform="labelbox" if args.command == "run" else "local")
    if not _checked(chain):
        return 2
    if args.command == "serve":
        with chain:
            for name, url in chain.urls.items():
                print(f"{name:<10} {url}")
            print(f"local engine training: {training_budget(env, os.environ)}")
            print(f"webhook secret for this session (sign requests with it; it is not stored): {chain.secret}")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
    if args.command == "run":
        settings = chain.check()
        assert settings.labelbox is not None
        print(f"Labelbox model run {args.model_run} at {settings.labelbox.endpoint}; data in {chain.data_dir}")
        started = time.monotonic()
        with chain:
            print(f"functions on {', '.join(f'{n}:{p}' for n, p in chain.ports.items())}; logs in {chain.log_dir}")
            print(f"local engine training: {training_budget(env, os.environ)}")
            return _train(
                chain, args.model_run, args.model_type, force=args.force, timeout_s=args.timeout, started=started
            )
    for variable, rows in DEMO_SHARD_ROWS.items():  # the demo runs in shards too, as a big run would
        if variable not in os.environ:
            chain.env[variable] = str(rows)
    model_run_id, _model_id = _ids(args.seed)
    folder = create_demo_model_run(
        args.data_dir / "model_runs", images=args.images, seed=args.seed, unlabeled=args.unlabeled
    )
    print(f"demo model run: {folder} ({args.images} images, {args.unlabeled} of them more nobody labeled yet)")
    if "LABEL_NEXT_PROJECT_ID" not in os.environ:  # the loop closes: the rows to label next go to a project
        project = create_demo_project(Path(os.environ.get("LOCAL_PROJECTS_DIR") or args.data_dir / "projects"))
        chain.env["LABEL_NEXT_PROJECT_ID"] = project.name
        print(f"demo labeling project: {project}")
    started = time.monotonic()
    with chain:
        print(f"functions on {', '.join(f'{n}:{p}' for n, p in chain.ports.items())}; logs in {chain.log_dir}")
        print(f"local engine training: {training_budget(env, os.environ)}")
        return _train(chain, model_run_id, args.model_type, force=args.force, timeout_s=3600, started=started)


if __name__ == "__main__":
    sys.exit(main())
