"""A Catalog slice for the local platform (`<model_runs_dir>/../slices/<slice_id>.ndjson`), drawn like the demo."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from shared.demo import create_demo_model_run


def write_demo_slice(slices_dir: Path, slice_id: str, *, images: int = 4, seed: int = 2) -> list[str]:
    """Writes the slice file and its media (relative `row_data`, next to the file); returns its data row ids."""
    media = slices_dir / "media" / slice_id
    media.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = create_demo_model_run(Path(scratch), images=images, seed=seed)
        lines, ids = [], []
        for line in (folder / "export.ndjson").read_text().splitlines():
            row = json.loads(line)
            name = Path(row["data_row"]["row_data"]).name
            shutil.copy(folder / row["data_row"]["row_data"], media / name)
            data_row = {**row["data_row"], "row_data": f"media/{slice_id}/{name}"}
            lines.append(json.dumps({"data_row": data_row, "media_attributes": row["media_attributes"]}))
            ids.append(data_row["id"])
    (slices_dir / f"{slice_id}.ndjson").write_text("\n".join(lines) + "\n")
    return ids
