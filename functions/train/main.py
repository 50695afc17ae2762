"""POST {"run_id": ...}: creates the dataset and starts the training job; monitor does the waiting."""

import functions_framework

from shared.http_entry import stage_endpoint
from shared.stages.train import run_train, train_already_done

train = functions_framework.http(stage_endpoint("train", run_train, on_done=train_already_done))
