"""Hand-off to the next stage by HTTP POST of `{"run_id": ...}`.

A stage does its work inside the request, so the caller does not wait for the answer: once the
request is delivered and the callee has not refused it within `accept_timeout_s`, the hand-off is
done (the callee owns the stage through the run record from then on). Refusals and transport errors
are retried with exponential backoff; a 4xx other than 409 is final (the callee said the request is
wrong, and repeating it will not help). In the cloud every request carries a Google OIDC ID token
minted for the target URL, so only our own service account can call the private stages.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping

import requests

from shared.chain.port import HandOffFailed, stage_body

log = logging.getLogger(__name__)

TokenSource = Callable[[str], str]


class GoogleIdTokens:
    """Mints and caches OIDC ID tokens for target audiences (google-auth, metadata server in the cloud)."""

    def __init__(self, lifetime_s: float = 50 * 60) -> None:
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._lifetime_s = lifetime_s

    def __call__(self, audience: str) -> str:
        with self._lock:
            cached = self._cache.get(audience)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        import google.auth.transport.requests
        import google.oauth2.id_token

        token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
        with self._lock:
            self._cache[audience] = (token, time.monotonic() + self._lifetime_s)
        return token


class HttpHandOff:
    def __init__(
        self,
        stage_urls: Mapping[str, str],
        *,
        token_source: TokenSource | None = None,
        attempts: int = 6,
        first_backoff_s: float = 0.5,
        accept_timeout_s: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.stage_urls = dict(stage_urls)
        self._token_source = token_source
        self._attempts = attempts
        self._first_backoff_s = first_backoff_s
        self._accept_timeout_s = accept_timeout_s
        self._session = session or requests.Session()

    def hand_off(self, stage: str, run_id: str) -> None:
        url = self.stage_urls[stage]
        last = "no attempt made"
        for attempt in range(self._attempts):
            headers = {"Content-Type": "application/json"}
            try:
                if self._token_source is not None:
                    headers["Authorization"] = f"Bearer {self._token_source(url)}"
                response = self._session.post(
                    url, json=stage_body(run_id), headers=headers, timeout=(5, self._accept_timeout_s)
                )
            except requests.ReadTimeout:
                log.info("hand-off to %s for run %s delivered; the stage is working", stage, run_id)
                return
            except Exception as exc:  # transport errors, and a token that could not be minted (metadata server)
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
