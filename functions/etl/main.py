"""POST {"run_id": ...}: exports the model run and splits it into shards, or, once every shard is done,
checks the whole training set and hands off to train. POST {"run_id": ..., "shard": i}: one shard's
images staged and its chunk of the Vertex training set and of the row manifest written."""

import functions_framework

from shared.http_entry import stage_endpoint
from shared.stages.etl import run_etl, run_etl_shard

etl = functions_framework.http(stage_endpoint("etl", run_etl, shard_work=run_etl_shard))
