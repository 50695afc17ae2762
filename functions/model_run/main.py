"""POST /model_run: Labelbox's "Train model" webhook. Verifies, opens the run, hands off to etl."""

import flask
import functions_framework

from shared.bootstrap import services
from shared.http_entry import answer, read_body, require_method
from shared.stages.model_run import start_training_run
from shared.webhook import Rejected, parse_training_request, verify_signature

SERVICES = services("model_run")  # validates the configuration and builds the ports when the function starts


@functions_framework.http
def model_run(request: flask.Request) -> flask.Response:
    try:
        require_method(request, "POST")
        body = read_body(request, SERVICES.settings.max_webhook_bytes)
        verify_signature(body, request.headers, SERVICES.settings.webhook_secret)
        training = parse_training_request(body, SERVICES.settings.model_types())
    except Rejected as exc:
        return answer(exc.status, {"error": exc.message})
    result = start_training_run(SERVICES, training)
    return answer(result.status, result.body)
