"""GET /models: the model types this deployment can train, as Labelbox's model-training settings expect."""

import functions_framework

from shared.http_entry import signed_endpoint
from shared.stages.model_run import list_model_types

models = functions_framework.http(signed_endpoint("models", "GET", list_model_types))
