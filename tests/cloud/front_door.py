"""A stand-in for the IAM check Cloud Run puts in front of a private (`--no-allow-unauthenticated`) function.

A reverse proxy on its own loopback port: a request must carry `Authorization: Bearer <ID token>` that
the shared `TokenAuthority` verifies, with `aud` equal to the front door's own URL (or another audience
configured) and `email` among the allowed invokers (standing for `roles/run.invoker`). Missing or
invalid token: 401; valid token, not an invoker: 403; both with short plain-text bodies like Cloud
Run's. `deny_until` (a `time.monotonic()` value) answers 403 to everyone before it, as a freshly deployed
function does while its IAM binding propagates. Allowed requests go to `target` (path and query kept,
Authorization passed on as Cloud Run does) and the answer streams back with its status and headers; an
unreachable target is a 503, one slower than `timeout_s` a 504. Every request is recorded with its verdict.

What it does NOT prove: Google's real token verification (RS256, JWKS), custom audiences set on the
service, ingress settings, Cloud Run's request size and time limits, its headers (only
X-Forwarded-For/-Proto are added) and HTTPS.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import requests as http
from flask import Flask, Response, request

from tests.cloud._http import LoopbackServer, bearer_token
from tests.cloud.google_tokens import InvalidToken, TokenAuthority

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}


@dataclass(frozen=True)
class Passage:
    """One request at the door. `verdict`: forwarded, unauthenticated, forbidden, propagating,
    upstream_unreachable, upstream_timeout."""

    method: str
    path: str
    identity: str | None
    verdict: str
    reason: str
    status: int
    at: float  # time.monotonic()


class FrontDoor(LoopbackServer):
    """Checks the caller's ID token, then proxies to `target`. `url` is also the audience it expects."""

    def __init__(
        self,
        authority: TokenAuthority,
        target: str,
        *,
        invokers: Collection[str],
        audiences: Collection[str] = (),
        deny_until: float | None = None,
        timeout_s: float = 600.0,
        name: str = "front-door",
    ) -> None:
        super().__init__(name)
        self.authority = authority
        self.target = target.rstrip("/")
        self.invokers = set(invokers)
        self.extra_audiences = set(audiences)
        self.deny_until = deny_until
        self.timeout_s = timeout_s
        self.passages: list[Passage] = []

    @property
    def audiences(self) -> set[str]:
        return {self.url, *self.extra_audiences}

    def verdicts(self) -> list[str]:
        with self._record_lock:
            return [p.verdict for p in self.passages]

    def build_app(self) -> Flask:
        app = Flask(self.name)

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
        @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
        def door(path: str) -> Response:
            return self._pass()

        return app

    def _note(self, identity: str | None, verdict: str, reason: str, status: int) -> None:
        passage = Passage(request.method, request.path, identity, verdict, reason, status, time.monotonic())
        with self._record_lock:
            self.passages.append(passage)
        self.record(request, identity=identity, status=status)

    def _pass(self) -> Response:
        token = bearer_token(request.headers)
        if token is None:
            return self._unauthorized("no bearer token")
        try:
            claims = self.authority.verify_id_token(token, self.audiences)
        except InvalidToken as exc:
            return self._unauthorized(str(exc))
        email = claims["email"]
        if self.deny_until is not None and time.monotonic() < self.deny_until:
            return self._forbidden(email, "propagating", "IAM policy not propagated yet")
        if email not in self.invokers:
            return self._forbidden(email, "forbidden", f"{email} is not an invoker")
        return self._forward(email)

    def _unauthorized(self, reason: str) -> Response:
        self._note(None, "unauthenticated", reason, 401)
        body = f"Error: Unauthorized\nYour client does not have permission to the requested URL {request.path}.\n"
        response = Response(body, 401, mimetype="text/plain")
        response.headers["WWW-Authenticate"] = (
            'Bearer error="invalid_token" error_description="The access token could not be verified"'
        )
        return response

    def _forbidden(self, email: str, verdict: str, reason: str) -> Response:
        self._note(email, verdict, reason, 403)
        body = f"Error: Forbidden\nYour client does not have permission to get URL {request.path} from this server.\n"
        return Response(body, 403, mimetype="text/plain")

    def _forward(self, email: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
        headers["X-Forwarded-For"] = request.remote_addr or "127.0.0.1"
        headers["X-Forwarded-Proto"] = "https"
        query = request.query_string.decode("latin-1")
        url = f"{self.target}{request.path}" + (f"?{query}" if query else "")
        session = http.Session()
        session.trust_env = False
        try:
            upstream = session.request(
                request.method,
                url,
                headers=headers,
                data=request.get_data(),
                stream=True,
                allow_redirects=False,
                timeout=self.timeout_s,
            )
        except http.Timeout as exc:
            session.close()
            self._note(email, "upstream_timeout", str(exc), 504)
            return Response("upstream request timeout\n", 504, mimetype="text/plain")
        except http.RequestException as exc:
            session.close()
            self._note(email, "upstream_unreachable", str(exc), 503)
            return Response("Service Unavailable\n", 503, mimetype="text/plain")
        self._note(email, "forwarded", "", upstream.status_code)

        def stream() -> Iterator[bytes]:
            try:
                yield from upstream.raw.stream(64 * 1024, decode_content=False)
            finally:
                upstream.close()
                session.close()

        out_headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP]
        return Response(stream(), status=upstream.status_code, headers=out_headers, direct_passthrough=True)
