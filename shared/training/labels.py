"""The labels every backend resource carries, so a deployment's datasets, models and jobs are findable:
teardown deletes by `lb_chain`, and a run's resources are listed by `lb_model_run`."""

from __future__ import annotations

from shared.config import Settings
from shared.domain.run_record import RunRecord
from shared.formats.vertex_import import label_value

CHAIN_LABEL = "lb_chain"
MODEL_RUN_LABEL = "lb_model_run"


def resource_labels(settings: Settings, record: RunRecord) -> dict[str, str]:
    return {
        CHAIN_LABEL: label_value(settings.deployment_name),
        MODEL_RUN_LABEL: label_value(record.model_run_id),
    }
