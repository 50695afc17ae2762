"""POST {"run_id": ...}: batch prediction, then (once it is done) its output split into delivery shards,
or, once every shard is done, the merged metrics, the report and COMPLETE. POST {"run_id": ..., "shard":
i}: one delivery shard's rows joined to their predictions, uploaded, and their metrics partials stored."""

import functions_framework

from shared.http_entry import stage_endpoint
from shared.stages.inference import run_inference, run_inference_shard

inference = functions_framework.http(stage_endpoint("inference", run_inference, shard_work=run_inference_shard))
