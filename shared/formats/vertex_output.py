"""How Vertex AI names a batch prediction job's output folder, which the chain's own jobs name alike."""

from __future__ import annotations

import datetime as dt
import re


def output_directory_name(display_name: str, now: dt.datetime) -> str:
    """`prediction-<model display name>-<YYYY-MM-DDThh:mm:ss.sssZ>`, as Vertex names its output folder."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", display_name).strip("_") or "model"
    stamp = now.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"prediction-{safe}-{stamp}"
