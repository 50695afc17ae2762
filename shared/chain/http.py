"""One delivery of a stage call on loopback: an HTTP POST to the stage's function, and what its answer means.

The local queue (`timer.py`) delivers every call this way and retries what was not taken, as Cloud
Tasks retries a task: 2xx is taken; no answer within `answer_timeout_s` means the stage is still working
on it (it owns the stage through the run record from then on); a 409 means another invocation holds the
stage (`busy`); any other 4xx but 429 means the call itself is wrong (`final`: repeating it cannot help);
a 5xx, a 429 or no connection is worth another delivery later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import requests

from shared.chain.port import HandOffFailed

log = logging.getLogger(__name__)


class HttpDelivery:
    def __init__(
        self,
        stage_urls: Mapping[str, str],
        *,
        answer_timeout_s: float = 540.0,
        session: requests.Session | None = None,
    ) -> None:
        self.stage_urls = dict(stage_urls)
        self._answer_timeout_s = answer_timeout_s
        self._session = session or requests.Session()

    def post(self, stage: str, body: Mapping[str, Any]) -> None:
        """POSTs `body`, a JSON object, to the stage's URL once; raises HandOffFailed if it was not taken."""
        url = self.stage_urls[stage]
        run_id = body.get("run_id")
        try:
            response = self._session.post(
                url,
                json=dict(body),
                headers={"Content-Type": "application/json"},
                timeout=(5, self._answer_timeout_s),
            )
        except requests.ReadTimeout:
            log.info("call of %s for run %s delivered; the stage is still working", stage, run_id)
            return
        except requests.RequestException as exc:
            problem = f"could not reach {stage} for run {run_id} ({type(exc).__name__})"
            raise HandOffFailed(problem, stage=stage) from None
        status = response.status_code
        if status < 300:
            return
        text = f"{stage} answered run {run_id} with HTTP {status}: {response.text[:200]}"
        if status == 409:
            raise HandOffFailed(text, stage=stage, busy=True)
        raise HandOffFailed(text, stage=stage, final=400 <= status < 500 and status != 429)
