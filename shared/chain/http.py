"""The local chain's hand-off: an HTTP POST of the stage call to the next function on loopback.

A stage does its work inside the request, so the caller does not wait for the answer: once the
request is delivered and the callee has not refused it within `accept_timeout_s`, the hand-off is
done (the callee owns the stage through the run record from then on). Refusals and transport errors
are retried with exponential backoff; a 4xx other than 409 and 429 is final (the callee said the
request is wrong, and repeating it will not help). Local processes keep their CPU after the caller
hangs up, which is why this is the local transport only: in the cloud every hand-off is a Cloud Task.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import requests

from shared.chain.port import HandOffFailed, stage_body

log = logging.getLogger(__name__)


class HttpHandOff:
    def __init__(
        self,
        stage_urls: Mapping[str, str],
        *,
        attempts: int = 6,
        first_backoff_s: float = 0.5,
        accept_timeout_s: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.stage_urls = dict(stage_urls)
        self._attempts = attempts
        self._first_backoff_s = first_backoff_s
        self._accept_timeout_s = accept_timeout_s
        self._session = session or requests.Session()

    def hand_off(self, stage: str, run_id: str, *, key: str = "") -> None:
        """`key` is accepted for the port's sake: HTTP cannot de-duplicate, the run record does."""
        self.post(stage, stage_body(run_id))

    def post(self, stage: str, body: Mapping[str, Any]) -> None:
        """POSTs `body`, a JSON object, to the stage's URL."""
        url = self.stage_urls[stage]
        run_id = body.get("run_id")
        last = "no attempt made"
        for attempt in range(self._attempts):
            try:
                response = self._session.post(
                    url,
                    json=dict(body),
                    headers={"Content-Type": "application/json"},
                    timeout=(5, self._accept_timeout_s),
                )
            except requests.ReadTimeout:
                log.info("hand-off to %s for run %s delivered; the stage is working", stage, run_id)
                return
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
            else:
                if response.status_code < 300 or response.status_code == 409:
                    return
                last = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise HandOffFailed(f"{stage} refused run {run_id}: {last} {response.text[:200]}", stage=stage)
            if attempt + 1 < self._attempts:
                delay = self._first_backoff_s * 2**attempt
                time.sleep(delay * (0.5 + random.random() / 2))
        raise HandOffFailed(
            f"could not reach {stage} for run {run_id} after {self._attempts} attempts ({last})", stage=stage
        )
