"""A file-backed Labelbox model run: the labeling platform of the local mode.

One folder per model run, in Labelbox's shapes, so a user can build one by hand (README, "A local
model run"):

    <model_runs_dir>/<model_run_id>/
        model_run.json        {"id", "model_id", "name"}
        export.ndjson         one Labelbox model-run export row per line
        splits.json           optional {data_row_id: "TRAINING" | ...}, like model_run_data_rows()
        media/...             images that rows point at with relative `row_data` paths
        status.ndjson         written here: one line per status update, in order
        config.json           optional: the model run's config (its "train" object sets the run's
                              settings); the chain adds its results under "chain"
        predictions/<name>.ndjson   written here: each prediction import, as uploaded
    <model_runs_dir>/../slices/<slice_id>.ndjson   a Catalog slice: one data row per line,
                          {"data_row": {"id", "row_data", "global_key"?}, "media_attributes"?}; a
                          relative row_data is a file next to it. Adding it to a model run appends
                          its rows the export lacks, unlabeled and without a split.

Labeling projects (model-assisted labeling) are folders too, beside the model runs by default
(`LOCAL_PROJECTS_DIR`, `<LOCAL_DATA_DIR>/projects`); the user (or `shared.demo`) creates one:

    <projects_dir>/<project_id>/
        ontology.json                 the project's ontology, Labelbox's normalized ontology JSON
        batches/<batch name>.json     written here: each batch sent (Labelbox's batch fields, its rows)
        prelabels/<batch name>.ndjson written here: the batch's pre-labels, Labelbox MAL import rows

An export needs no wait here: `start_export` names a task derived from the model run id, which is
COMPLETE at once, and `read_export` streams `export.ndjson` line by line.

Uploads are validated the way the Labelbox SDK and server validate them (one of dataRow.id/globalKey,
known data rows, confidences in [0, 1], no reserved metric names), so errors surface locally first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import requests

from shared.atomic_file import write_bytes_atomically, write_json_atomically
from shared.domain.examples import Split
from shared.domain.label_next import project_id_problem
from shared.domain.run_record import iso
from shared.formats.labelbox_metrics import RESERVED_METRIC_NAMES
from shared.formats.labelbox_ontology import features_of, features_of_rows, mal_rows, match_features
from shared.platform.port import (
    ExportState,
    ExportStatus,
    ModelRunInfo,
    ModelRunNotFound,
    ModelRunStatus,
    PlatformError,
    ProjectRefused,
    SendResult,
    SliceNotFound,
    UploadResult,
    cut_message,
)

_CHUNK = 1 << 16
EXPORT_TASK_PREFIX = "local-export-"


class LocalModelRuns:
    def __init__(self, root: Path, projects_dir: Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.projects_dir = Path(projects_dir).resolve() if projects_dir else self.root.parent / "projects"

    def folder(self, model_run_id: str) -> Path:
        folder = (self.root / model_run_id).resolve()
        if folder.parent != self.root or not (folder / "model_run.json").is_file():
            raise ModelRunNotFound(f"model run {model_run_id} not found in {self.root}")
        return folder

    def get_model_run(self, model_run_id: str) -> ModelRunInfo:
        info = json.loads((self.folder(model_run_id) / "model_run.json").read_text())
        return ModelRunInfo(id=model_run_id, model_id=info.get("model_id"), name=info.get("name"))

    def export_rows(self, model_run_id: str) -> Iterator[dict[str, Any]]:
        task_id = self.start_export(model_run_id)
        status = self.export_status(task_id)
        if status.state is not ExportState.COMPLETE:
            raise PlatformError(f"could not export model run {model_run_id}: {status.error}")
        yield from self.read_export(model_run_id, task_id)

    def start_export(self, model_run_id: str) -> str:
        """The same task id for the same model run, so a re-run (another process) finds it again."""
        self.folder(model_run_id)
        return EXPORT_TASK_PREFIX + model_run_id

    def _export_file(self, task_id: str) -> Path:
        if not task_id.startswith(EXPORT_TASK_PREFIX):
            raise PlatformError(f"{task_id!r} is not an export task of the local model runs in {self.root}")
        return self.folder(task_id.removeprefix(EXPORT_TASK_PREFIX)) / "export.ndjson"

    def export_status(self, task_id: str) -> ExportStatus:
        if not self._export_file(task_id).is_file():
            return ExportStatus(ExportState.FAILED, error="the model run folder has no export.ndjson")
        return ExportStatus(ExportState.COMPLETE)

    def read_export(self, model_run_id: str, task_id: str) -> Iterator[dict[str, Any]]:
        """Checks now (task of this run, file present) and streams the file one line at a time."""
        path = self._export_file(task_id)
        if path.parent != self.folder(model_run_id):
            raise PlatformError(f"export task {task_id} is not an export of model run {model_run_id}")
        if not path.is_file():
            raise PlatformError(f"model run {model_run_id} has no export.ndjson in {path.parent}")
        return _export_lines(path)

    def data_row_splits(self, model_run_id: str) -> Mapping[str, Split]:
        path = self.folder(model_run_id) / "splits.json"
        if not path.is_file():
            return {}
        return {k: Split.parse(v) for k, v in json.loads(path.read_text()).items()}

    def _media_path(self, row_data: str, folder: Path | None) -> Path | None:
        parsed = urlparse(row_data)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path))
        if parsed.scheme or folder is None:
            return None
        path = (folder / row_data).resolve()
        if folder not in path.parents:
            raise PlatformError(f"media path {row_data!r} leaves the model run folder")
        return path

    def open_media(self, row_data: str, *, model_run_id: str | None = None) -> Iterator[bytes]:
        folder = self.folder(model_run_id) if model_run_id else None
        path = self._media_path(row_data, folder)
        if path is None:
            yield from _http_media(row_data)
            return
        try:
            with open(path, "rb") as media:
                while chunk := media.read(_CHUNK):
                    yield chunk
        except FileNotFoundError:
            raise PlatformError(f"media file not found: {row_data}") from None

    def media_size(self, row_data: str, *, model_run_id: str | None = None) -> int | None:
        path = self._media_path(row_data, self.folder(model_run_id) if model_run_id else None)
        if path is None:
            return None
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    def _append(self, path: Path, entry: Mapping[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as out:
            fcntl.flock(out, fcntl.LOCK_EX)
            out.write(json.dumps(entry, sort_keys=True) + "\n")

    def update_status(
        self,
        model_run_id: str,
        status: ModelRunStatus,
        *,
        metadata: Mapping[str, str] | None = None,
        error_message: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {"at": iso(time.time()), "status": ModelRunStatus(status).value}
        if metadata:
            entry["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        if error_message:
            entry["error_message"] = cut_message(error_message)
        self._append(self.folder(model_run_id) / "status.ndjson", entry)

    def statuses(self, model_run_id: str) -> list[dict[str, Any]]:
        path = self.folder(model_run_id) / "status.ndjson"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def get_config(self, model_run_id: str) -> dict[str, Any]:
        path = self.folder(model_run_id) / "config.json"
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlatformError(f"the model run's config.json is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise PlatformError("the model run's config.json must hold a JSON object")
        return config

    def update_config(self, model_run_id: str, config: Mapping[str, Any]) -> None:
        write_json_atomically(self.folder(model_run_id) / "config.json", config)

    def upload_predictions(self, model_run_id: str, name: str, rows: list[dict[str, Any]]) -> UploadResult:
        folder = self.folder(model_run_id)
        known = self._data_row_ids(folder)
        errors: list[dict[str, Any]] = []
        accepted: list[dict[str, Any]] = []
        for row in rows:
            problem = _row_problem(row, known)
            if problem:
                errors.append(
                    {
                        "uuid": row.get("uuid"),
                        "dataRow": row.get("dataRow"),
                        "status": "FAILURE",
                        "errors": [{"name": "ValidationError", "message": problem}],
                    }
                )
            else:
                accepted.append(row)
        target = folder / "predictions" / f"{_safe_name(name)}.ndjson"
        target.parent.mkdir(exist_ok=True)
        write_bytes_atomically(target, "".join(json.dumps(r, sort_keys=True) + "\n" for r in accepted).encode())
        return UploadResult(name=name, accepted=len(accepted), errors=errors)

    def uploaded(self, model_run_id: str) -> list[dict[str, Any]]:
        folder = self.folder(model_run_id) / "predictions"
        rows: list[dict[str, Any]] = []
        for path in sorted(folder.glob("*.ndjson")) if folder.is_dir() else []:
            rows.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
        return rows

    def _data_row_ids(self, folder: Path) -> set[str]:
        ids = set()
        with open(folder / "export.ndjson", encoding="utf-8") as lines:
            for line in lines:
                try:
                    ids.add(json.loads(line)["data_row"]["id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        return ids

    # -- labeling projects (model-assisted labeling) -------------------------------------------------

    def project_folder(self, project_id: str) -> Path:
        """The project's folder; ProjectRefused unless it exists with an ontology.json."""
        folder = (self.projects_dir / project_id).resolve()
        if project_id_problem(project_id) or not project_id or folder.parent != self.projects_dir:
            raise ProjectRefused(f"{project_id!r} is not a labeling project id")
        if not folder.is_dir():
            raise ProjectRefused(
                f"there is no labeling project {project_id} in {self.projects_dir}: create the folder {folder} "
                "with the project's ontology.json, or set another project id"
            )
        if not (folder / "ontology.json").is_file():
            raise ProjectRefused(
                f"labeling project {project_id} has no ontology.json: write the project's ontology "
                f"(Labelbox's normalized ontology JSON) to {folder / 'ontology.json'}"
            )
        return folder

    def project_ontology(self, project_id: str) -> dict[str, Any]:
        path = self.project_folder(project_id) / "ontology.json"
        try:
            ontology = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProjectRefused(f"labeling project {project_id}'s ontology.json is not JSON: {exc}") from None
        if not isinstance(ontology, dict):
            raise ProjectRefused(f"labeling project {project_id}'s ontology.json must hold a JSON object")
        return ontology

    def batches(self, project_id: str) -> list[dict[str, Any]]:
        """The project's batches, oldest first (by creation, then name)."""
        folder = self.project_folder(project_id) / "batches"
        found = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
        return sorted(found, key=lambda b: (b.get("createdAt", ""), b.get("name", "")))

    def prelabels(self, project_id: str, batch_name: str) -> list[dict[str, Any]]:
        path = self.project_folder(project_id) / "prelabels" / f"{_safe_name(batch_name)}.ndjson"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @contextmanager
    def _project_lock(self, folder: Path) -> Iterator[None]:
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def send_to_project(
        self,
        model_run_id: str,
        project_id: str,
        data_row_ids: Sequence[str],
        *,
        batch_name: str,
        priority: int,
        features: Collection[str] = (),
    ) -> SendResult:
        """Writes the pre-labels, then the batch (which marks the send done); rows of earlier batches are
        skipped. A batch file of this name already there means sent: nothing is written again."""
        run = self.folder(model_run_id)
        folder = self.project_folder(project_id)
        ids = list(dict.fromkeys(data_row_ids))
        name = _safe_name(batch_name)
        batch_path = folder / "batches" / f"{name}.json"
        with self._project_lock(folder):
            if batch_path.is_file():
                batch = json.loads(batch_path.read_text())
                return SendResult(
                    project_id,
                    batch_name,
                    sent=int(batch.get("size", 0)),
                    skipped_in_project=len(batch.get("excludedDataRowIds", ())),
                    batch_id=batch.get("id"),
                    import_id=batch.get("preLabels"),
                    already_sent=True,
                    unmatched_features=tuple(batch.get("unmatchedFeatures", ())),
                )
            known, wanted = self._data_row_ids(run), set(ids)
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise PlatformError(f"data rows {', '.join(unknown[:5])} are not in model run {model_run_id}")
            predictions = [r for r in self.uploaded(model_run_id) if (r.get("dataRow") or {}).get("id") in wanted]
            model = features_of_rows(predictions)
            match = match_features(model, features_of(self.project_ontology(project_id)), only=features)
            if not match.pairs and match.unmatched:
                raise ProjectRefused(
                    f"labeling project {project_id}'s ontology has none of the model's features "
                    f"({', '.join(match.unmatched)}): add them to its ontology.json, or send to another project"
                )
            in_project = {i for b in self.batches(project_id) for i in b.get("dataRowIds", ())}
            new = [i for i in ids if i not in in_project]
            skipped = [i for i in ids if i in in_project]
            if not new:  # nothing to send: no batch, as Labelbox creates none for no rows
                return SendResult(project_id, batch_name, 0, len(skipped), unmatched_features=match.unmatched)
            rows = mal_rows(predictions, match, data_row_ids=new, uuid_seed=f"{project_id}/{batch_name}")
            prelabels = folder / "prelabels" / f"{name}.ndjson"
            prelabels.parent.mkdir(exist_ok=True)
            write_bytes_atomically(prelabels, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
            now = iso(time.time())
            batch = {
                "id": "local-batch-" + hashlib.sha256(f"{project_id}/{batch_name}".encode()).hexdigest()[:20],
                "name": batch_name,
                "createdAt": now,
                "updatedAt": now,
                "size": len(new),
                "priority": priority,
                "projectId": project_id,
                "dataRowIds": new,
                "excludedDataRowIds": skipped,  # already in the project (excludeDataRowsInProject)
                "source": {"modelRunId": model_run_id},
                "preLabels": f"prelabels/{name}.ndjson",
                "unmatchedFeatures": list(match.unmatched),
            }
            batch_path.parent.mkdir(exist_ok=True)
            write_json_atomically(batch_path, batch)
        return SendResult(
            project_id,
            batch_name,
            sent=len(new),
            skipped_in_project=len(skipped),
            batch_id=batch["id"],
            import_id=batch["preLabels"],
            unmatched_features=match.unmatched,
        )

    # -- rows from a Catalog slice, to rank for labeling -----------------------------------------

    @property
    def slices_dir(self) -> Path:
        """Next to the model runs, as Catalog is beside them in Labelbox: a slice is not one run's."""
        return self.root.parent / "slices"

    def add_rows_from_slice(
        self, model_run_id: str, slice_id: str, *, progress: Callable[[int], None] | None = None
    ) -> int:
        """Appends the slice's rows that the export lacks, in export shape, with a run object holding no
        labels and no split (so ETL keeps them unlabeled and UNASSIGNED, as Labelbox's upsert does)."""
        folder = self.folder(model_run_id)
        members = self._slice_rows(slice_id)
        info = json.loads((folder / "model_run.json").read_text())
        run: dict[str, Any] = {"name": info.get("name") or model_run_id, "labels": []}
        experiment = {"name": "local model", "runs": {model_run_id: run}}
        with open(folder / "export.ndjson", "a+", encoding="utf-8") as export:
            fcntl.flock(export, fcntl.LOCK_EX)  # another delivery adding the same slice waits, then adds nothing
            export.seek(0)
            present: set[str] = set()
            last = ""
            for line in export:
                last = line
                try:
                    present.add(json.loads(line)["data_row"]["id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
            new = [
                {**member, "experiments": {info.get("model_id") or "local-model": experiment}}
                for member in members
                if member["data_row"]["id"] not in present
            ]
            if new:
                lead = "\n" if last and not last.endswith("\n") else ""
                export.write(lead + "".join(json.dumps(r, sort_keys=True) + "\n" for r in new))
        if progress is not None:
            progress(len(members))
        return len(members)

    def _slice_rows(self, slice_id: str) -> list[dict[str, Any]]:
        """The slice file's data rows (each id once), relative media made absolute `file://` URIs."""
        path = (self.slices_dir / f"{slice_id}.ndjson").resolve()
        if path.parent != self.slices_dir.resolve() or not path.is_file():
            raise SliceNotFound(f"no Catalog slice {slice_id}: {self.slices_dir / f'{slice_id}.ndjson'} does not exist")
        rows: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                data_row = dict(entry["data_row"])
                data_row_id, row_data = data_row["id"], data_row["row_data"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise PlatformError(
                    f"slice file {path.name} line {number} is not a data row "
                    '({"data_row": {"id": ..., "row_data": ...}})'
                ) from None
            if not (isinstance(data_row_id, str) and data_row_id and isinstance(row_data, str) and row_data):
                raise PlatformError(f"slice file {path.name} line {number}: data_row id and row_data must be text")
            if not urlparse(row_data).scheme:
                data_row["row_data"] = (path.parent / row_data).resolve().as_uri()
            member: dict[str, Any] = {"data_row": data_row}
            if isinstance(entry.get("media_attributes"), Mapping):
                member["media_attributes"] = dict(entry["media_attributes"])
            rows.setdefault(data_row_id, member)
        return list(rows.values())


def _export_lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield {"_malformed": f"line {number} is not valid JSON"}


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]


def _row_problem(row: Mapping[str, Any], known: set[str]) -> str | None:
    data_row = row.get("dataRow")
    if not isinstance(data_row, Mapping) or len({"id", "globalKey"} & set(data_row)) != 1:
        return "dataRow must have exactly one of id or globalKey"
    if "id" in data_row and data_row["id"] not in known:
        return f"data row {data_row['id']} is not in this model run"
    if "metricValue" in row:
        name = row.get("metricName")
        if isinstance(name, str) and name.lower() in RESERVED_METRIC_NAMES:
            return f"metricName {name!r} is reserved"
        return None
    if not (row.get("name") or row.get("schemaId")):
        return "one of name or schemaId is required"
    confidence = row.get("confidence")
    if confidence is not None and not (isinstance(confidence, (int, float)) and 0 <= confidence <= 1):
        return "confidence must be between 0 and 1"
    bbox = row.get("bbox")
    if bbox is not None:
        try:
            values = [float(bbox[k]) for k in ("top", "left", "height", "width")]
        except (KeyError, TypeError, ValueError):
            return "bbox needs numeric top, left, height and width"
        if not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
            return "bbox must have a positive size"
    return None


def _http_media(url: str) -> Iterator[bytes]:
    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as response:
            if response.status_code >= 400:
                raise PlatformError(f"media download failed with HTTP {response.status_code}: {url.split('?')[0]}")
            yield from response.iter_content(_CHUNK)
    except requests.RequestException as exc:
        raise PlatformError(f"media download failed ({type(exc).__name__}): {url.split('?')[0]}") from None
