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
SHARD = "{:05d}"


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
    def etl_plan(self) -> str:
        """What ETL's split decided for every shard: label names, the classification question, counts."""
        return f"{self.etl}plan.json"

    def export_part(self, shard: int) -> str:
        """A shard's rows of the export, converted: what the shard stages and turns into its chunk."""
        return f"{self.etl}export/part-{SHARD.format(shard)}.jsonl"

    def export_duplicates(self, shard: int) -> str:
        """The positions, within the shard's part, of rows whose data row id an earlier row had."""
        return f"{self.etl}export/duplicates-{SHARD.format(shard)}.json"

    @property
    def images(self) -> str:
        return f"{self.root}images/"

    def image(self, stem: str, ext: str, shard: int) -> str:
        """A staged image, in its ETL shard's folder: a prediction's image URI names the manifest chunk
        (the shard) that holds its row, so inference can route predictions without a table of all rows."""
        return f"{self.images}{SHARD.format(shard)}/{stem}.{ext}"

    def shard_of_image(self, key: str) -> int | None:
        """The ETL shard whose folder holds the staged image `key`, or None for a key that is not one."""
        if not key.startswith(self.images):
            return None
        folder, slash, _name = key[len(self.images) :].partition("/")
        return int(folder) if slash and len(folder) == 5 and folder.isdigit() else None

    # -- shards of any stage ----------------------------------------------------------------------

    def shard_state(self, stage: str, shard: int) -> str:
        return f"{self.root}shards/{stage}/state-{SHARD.format(shard)}.json"

    def shard_result(self, stage: str, shard: int) -> str:
        return f"{self.root}shards/{stage}/result-{SHARD.format(shard)}.json"

    # -- training and inference -------------------------------------------------------------------

    @property
    def local_dataset(self) -> str:
        return f"{self.root}local_dataset/import.jsonl"

    def custom_job_output(self, job_key: str) -> str:
        """A Vertex AI custom job's base output directory (its model goes in `model/` under it)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", job_key):
            raise ValueError(f"{job_key!r} cannot name a folder")
        return f"{self.root}custom/{job_key}/"

    @property
    def instances(self) -> str:
        return f"{self.root}inference/instances.jsonl"

    @property
    def prediction_output(self) -> str:
        return f"{self.root}inference/output"

    # -- inference delivery, in shards ------------------------------------------------------------

    def manifest_chunk_index(self, key: str) -> int | None:
        """The index of the manifest chunk `key`, or None for a key that is not one."""
        if not key.startswith(self.manifest_chunks) or not key.endswith(".jsonl"):
            return None
        digits = key[len(self.manifest_chunks) : -len(".jsonl")]
        return int(digits) if len(digits) == 5 and digits.isdigit() else None

    @property
    def inference_delivery(self) -> str:
        """Everything inference's delivery shards share: the plan, and per split of the work its routed
        prediction lines, metrics partials and report candidates."""
        return f"{self.root}inference/delivery/"

    @property
    def inference_plan(self) -> str:
        """How the held-out rows were cut into delivery shards, and where their prediction lines went."""
        return f"{self.inference_delivery}plan.json"

    def inference_split(self, generation: int) -> str:
        """The objects of one split of the delivery: a new split never reads an older one's files."""
        return f"{self.inference_delivery}g{SHARD.format(generation)}/"

    def inference_part(self, generation: int, chunk: int | None, part: int) -> str:
        """One object of the prediction lines routed to manifest chunk `chunk` (None: the lines that
        name no held-out row, which shard 0 counts)."""
        folder = "stray" if chunk is None else f"chunk-{SHARD.format(chunk)}"
        return f"{self.inference_split(generation)}routed/{folder}/part-{SHARD.format(part)}.jsonl"

    def metric_partial(self, generation: int, shard: int, split: str) -> str:
        """A delivery shard's metrics partial of one split (`shared.metrics.merged`), for the fan-in."""
        return f"{self.inference_split(generation)}metrics/{split}-{SHARD.format(shard)}.part"

    def report_candidates(self, generation: int, shard: int) -> str:
        """A delivery shard's candidates for the report's samples (its first rows by data row id)."""
        return f"{self.inference_split(generation)}samples/samples-{SHARD.format(shard)}.json"

    def label_next_candidates(self, generation: int, shard: int) -> str:
        """A delivery shard's most uncertain rows (its top of "label these next"), for the fan-in."""
        return f"{self.inference_split(generation)}label_next/label-next-{SHARD.format(shard)}.json"

    def upload_marker(self, name: str) -> str:
        """Written once the platform took the prediction import `name`: a re-delivery skips that chunk.
        Outside any split, so a forced re-split uploads nothing twice either."""
        return f"{self.root}inference/uploads/{name}.json"
