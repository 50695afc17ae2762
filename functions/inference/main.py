"""POST {"run_id": ...}: Batch prediction, then predictions, metrics and a report back into the model run."""

import functions_framework

from shared.http_entry import stage_endpoint
from shared.stages.inference import run_inference

inference = functions_framework.http(stage_endpoint("inference", run_inference))
