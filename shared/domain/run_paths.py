"""Where a run's objects live in the bucket: every `runs/<run_id>/...` key is named here, once.

The layout is part of the product's contract: a user finds a run's record, images, training set,
predictions and report under one prefix, and the bucket's lifecycle rule expires the images there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
IMPORT_CHUNK = "vertex_import-{:05d}.jsonl"
MANIFEST_CHUNK = "manifest-{:05d}.jsonl"


@dataclass(frozen=True)
class RunPaths:
    run_id: str

    def __post_init__(self) -> None:
        if not _RUN_ID.fullmatch(self.run_id):  # an id becomes a path: it may not leave runs/<id>/
            raise ValueError(f"not a run id: {self.run_id!r}")

    @property
    def root(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def record(self) -> str:
        return f"{self.root}run.json"

    @property
    def report(self) -> str:
        return f"{self.root}report.html"

    # -- ETL --------------------------------------------------------------------------------------

    @property
    def etl(self) -> str:
        return f"{self.root}etl/"

    def import_chunk(self, index: int) -> str:
        return self.etl + IMPORT_CHUNK.format(index)

    def manifest_chunk(self, index: int) -> str:
        return self.etl + MANIFEST_CHUNK.format(index)

    @property
    def import_chunks(self) -> str:
        """The prefix every import chunk's key starts with."""
        return self.etl + IMPORT_CHUNK.split("{")[0]

    @property
    def manifest_chunks(self) -> str:
        return self.etl + MANIFEST_CHUNK.split("{")[0]

    @property
    def import_pattern(self) -> str:
        """All import chunks as one wildcard key, as Vertex accepts in an import URI."""
        return self.import_chunks + "*.jsonl"

    @property
    def manifest_pattern(self) -> str:
        return self.manifest_chunks + "*.jsonl"

    @property
    def images(self) -> str:
        return f"{self.root}images/"

    def image(self, stem: str, ext: str) -> str:
        return f"{self.images}{stem}.{ext}"

    # -- training and inference -------------------------------------------------------------------

    @property
    def local_dataset(self) -> str:
        return f"{self.root}local_dataset/import.jsonl"

    @property
    def instances(self) -> str:
        return f"{self.root}inference/instances.jsonl"

    @property
    def prediction_output(self) -> str:
        return f"{self.root}inference/output"
