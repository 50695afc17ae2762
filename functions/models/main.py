"""GET /models: the model types this deployment can train, as Labelbox's model-training settings expect."""

import flask
import functions_framework

from shared.bootstrap import services
from shared.http_entry import answer, read_body, require_method
from shared.webhook import Rejected, verify_signature

SERVICES = services("models")  # validates the configuration and builds the ports when the function starts


@functions_framework.http
def models(request: flask.Request) -> flask.Response:
    try:
        require_method(request, "GET")
        body = read_body(request, SERVICES.settings.max_webhook_bytes)
        verify_signature(body, request.headers, SERVICES.settings.webhook_secret)
    except Rejected as exc:
        return answer(exc.status, {"error": exc.message})
    return answer(200, {name: {} for name in SERVICES.settings.model_types()})
