"""The fake Labelbox with a Catalog: slices (saved queries) of data rows, and data rows added to the model run.

It answers what the SDK 7.17 sends for `client.get_catalog_slice(id)`, `CatalogSlice.get_data_row_identifiers()`
(cursor pages) and `ModelRun.upsert_data_rows(...)` with its task polling (captured by running the SDK
against it). A data row added to the model run joins the fake's rows unlabeled, with no split, so the
next export carries it, as Labelbox's does. A subclass of `FakeLabelbox`, so the other operations are
its own.

    with running_fake_catalog(ROWS, catalog=..., slices={"slice-id": [data_row_ids]}, ...) as fake:
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.platform.fake_labelbox import TIMESTAMP, FakeLabelbox, GraphQLError, Operation


@dataclass
class Registration:
    """One `createMEAModelRunDataRowRegistrationTask`: the ids it was sent and how it ends."""

    task_id: str
    model_run_id: str
    data_row_ids: list[str]
    global_keys: list[str] | None
    running_polls: int
    error: str | None = None  # FAILED with this message
    polls: int = 0
    settled: bool = False
    statuses: list[str] = field(default_factory=list)  # what each poll answered


class FakeCatalog(FakeLabelbox):
    """A FakeLabelbox whose organization also has Catalog data rows and slices of them.

    - catalog: Catalog rows (`{"data_row": {...}, "media_attributes": {...}}`), by data row id;
    - slices: slice id -> data row ids, in order (`max_page_size` caps a page of them too);
    - upsert_running_polls: status polls answered IN_PROGRESS first (each costs the SDK 5 s);
    - upsert_failure: every registration task ends FAILED with this message.
    A registration of an id the Catalog lacks ends FAILED too, naming it.
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        catalog: Sequence[Mapping[str, Any]] = (),
        slices: Mapping[str, Sequence[str]] | None = None,
        upsert_running_polls: int = 0,
        upsert_failure: str | None = None,
        **behaviour: Any,
    ) -> None:
        super().__init__(rows, **behaviour)
        self.catalog = {r["data_row"]["id"]: copy.deepcopy(dict(r)) for r in catalog}
        self.slices = {k: list(v) for k, v in (slices or {}).items()}
        self.upsert_running_polls = upsert_running_polls
        self.upsert_failure = upsert_failure
        self.registrations: list[Registration] = []

    def _handlers(self) -> dict[str, Callable[[Operation], dict[str, Any]]]:
        return {
            **super()._handlers(),
            "getSavedQueryPyApi": self._get_saved_query,
            "getDataRowIdenfifiersBySavedQueryPyApi": self._slice_identifiers,  # sic: the SDK's spelling
            "createMEAModelRunDataRowRegistrationTaskPyApi": self._register_data_rows,
            "MEADataRowRegistrationTaskStatusPyApi": self._registration_status,
        }

    def _slice(self, slice_id: str) -> list[str]:
        if slice_id not in self.slices:
            raise GraphQLError(f"Saved query {slice_id} not found", "RESOURCE_NOT_FOUND")
        return self.slices[slice_id]

    def _get_saved_query(self, op: Operation) -> dict[str, Any]:
        slice_id = op.variables["id"]
        self._slice(slice_id)
        return {
            "getSavedQuery": {
                "id": slice_id,
                "name": f"slice {slice_id}",
                "description": None,
                "filter": [{"type": "dataset", "operator": "is", "ids": ["cdataset0000000000000000001"]}],
                "createdAt": TIMESTAMP,
                "updatedAt": TIMESTAMP,
            }
        }

    def _slice_identifiers(self, op: Operation) -> dict[str, Any]:
        ids = self._slice(op.variables["id"])
        start = int(op.variables.get("from") or 0)
        size = min(int(op.variables["first"]), self.max_page_size)
        page = ids[start : start + size]
        after = start + len(page)
        more = after < len(ids)
        keys = {i: (self.catalog.get(i, {}).get("data_row") or {}).get("global_key") for i in page}
        nodes = [{"id": i, "globalKey": keys[i]} for i in page]
        return {
            "getDataRowIdentifiersBySavedQuery": {
                "totalCount": len(ids),
                "nodes": nodes,
                "pageInfo": {"endCursor": str(after) if more else None, "hasNextPage": more},
            }
        }

    def _register_data_rows(self, op: Operation) -> dict[str, Any]:
        self._check_run(op.variables["modelRunId"])
        ids = list(op.variables.get("dataRowIds") or [])
        unknown = [i for i in ids if i not in self.catalog]
        error = self.upsert_failure or (f"Data rows not found: {', '.join(unknown[:5])}" if unknown else None)
        task = Registration(
            task_id="cregistration" + uuid.uuid4().hex[:12],
            model_run_id=op.variables["modelRunId"],
            data_row_ids=ids,
            global_keys=op.variables.get("globalKeys"),
            running_polls=self.upsert_running_polls,
            error=error,
        )
        self.registrations.append(task)
        return {"createMEAModelRunDataRowRegistrationTask": task.task_id}

    def _registration_status(self, op: Operation) -> dict[str, Any]:
        task_id = op.variables["where"]["id"]
        task = next((t for t in self.registrations if t.task_id == task_id), None)
        if task is None:
            raise GraphQLError(f"Task {task_id} not found", "RESOURCE_NOT_FOUND")
        task.polls += 1
        if task.polls <= task.running_polls:
            status, message = "IN_PROGRESS", None
        elif task.error is not None:
            status, message = "FAILED", task.error
        else:
            status, message = "COMPLETE", None
            if not task.settled:
                self._add_to_run(task.data_row_ids)
        task.settled = status != "IN_PROGRESS"
        task.statuses.append(status)
        return {"MEADataRowRegistrationTaskStatus": {"status": status, "errorMessage": message}}

    def _add_to_run(self, data_row_ids: Sequence[str]) -> None:
        """Rows not yet in the run join it with no labels and no split, so the next export carries them."""
        present = {r["data_row"]["id"] for r in self.rows}
        for data_row_id in data_row_ids:
            if data_row_id in present:
                continue
            row = copy.deepcopy(self.catalog[data_row_id])
            run = {"name": self.model_run_name, "labels": [], "predictions": []}
            row["experiments"] = {self.model_id: {"name": "fake model", "runs": {self.model_run_id: run}}}
            self.rows.append(row)
            present.add(data_row_id)


@contextmanager
def running_fake_catalog(
    rows: Sequence[Mapping[str, Any]], *, model_run_id: str, model_id: str, **behaviour: Any
) -> Iterator[FakeCatalog]:
    """Starts a FakeCatalog on a free loopback port for the duration of the block."""
    fake = FakeCatalog(rows, model_run_id=model_run_id, model_id=model_id, **behaviour)
    with fake:
        yield fake
