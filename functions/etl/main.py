"""POST {"run_id": ...}: exports the model run; writes the Vertex training set and staged images to the bucket."""

import functions_framework

from shared.http_entry import stage_endpoint
from shared.stages.etl import run_etl

etl = functions_framework.http(stage_endpoint("etl", run_etl))
