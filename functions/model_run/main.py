"""POST /model_run: Labelbox's "Train model" webhook. Verifies, opens the run, hands off to etl."""

import functions_framework

from shared.http_entry import signed_endpoint
from shared.stages.model_run import on_train_model

model_run = functions_framework.http(signed_endpoint("model_run", "POST", on_train_model))
