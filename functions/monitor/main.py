"""POST {"run_id": ...}: Looks at the run's long job once and schedules its next look; never sleeps."""

import functions_framework

from shared.http_entry import stage_endpoint
from shared.stages.monitor import run_monitor

monitor = functions_framework.http(stage_endpoint("monitor", run_monitor))
