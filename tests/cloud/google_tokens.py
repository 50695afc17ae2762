"""A stand-in for the GCE metadata server of a Cloud Function, and for the Google token authority.

google-auth finds the metadata server through `GCE_METADATA_HOST` (the `/computeMetadata/v1/` paths)
and `GCE_METADATA_IP` (the bare `GET /` ping of `is_on_gce`/`fetch_id_token`), both `host:port`, and
talks to it with `Metadata-Flavor: Google` both ways. This server answers every path google-auth 2.62.2
uses: the ping, `project/project-id`, `universe/universe-domain`, `instance/service-accounts/default/`
(`?recursive=true`), `.../token` and `.../identity?audience=...&format=full`, plus the numeric project
id, email, scopes and region a function may read.

`TokenAuthority` issues what Google's token service would: opaque access tokens it remembers, and ID
tokens that look like Google's (a JWT with iss/aud/azp/email/email_verified/sub/iat/exp) but are signed
with HMAC-SHA256 under a per-instance random key, so only this authority can verify them. The Cloud
Tasks stand-in and the front door share one authority with this server.

What it does NOT prove: real IAM (who may mint for whom, token scopes), Google's RS256 keys and JWKS
rotation, metadata server latency or outages, and the Regional Access Boundary lookup that
`compute_engine.Credentials` starts in the background after a refresh: that one goes to
https://iamcredentials.googleapis.com directly and cannot be pointed here (`child_env(seal=True)` sends
it into a closed local proxy instead of the internet).

google-auth reads `GCE_METADATA_HOST` once, when `google.auth.compute_engine._metadata` is imported;
a test in this process must also patch the module attribute: use `apply(monkeypatch)`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request

from tests.cloud._http import LoopbackServer

if TYPE_CHECKING:
    import pytest

DEFAULT_SERVICE_ACCOUNT = "lb-chain-runtime@test-project.iam.gserviceaccount.com"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_ISSUER = "https://accounts.google.com"
_ISSUERS = (GOOGLE_ISSUER, "accounts.google.com")
# Sends any non-loopback HTTP(S) of a child process into a closed local port: nothing leaves the machine.
NO_EGRESS_ENV = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# Variables that would make google.auth.default() answer without asking the metadata server.
_MASKING_VARIABLES = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GOOGLE_CLOUD_QUOTA_PROJECT")


class InvalidToken(ValueError):
    """An ID token this authority did not issue, or one not valid for this audience or time."""


@dataclass(frozen=True)
class AccessGrant:
    token: str
    email: str
    scopes: tuple[str, ...]
    expires_at: float  # epoch seconds


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenAuthority:
    """Issues and checks access tokens and ID tokens for service accounts; thread-safe."""

    def __init__(
        self,
        *,
        access_token_lifetime_s: float = 3600.0,
        id_token_lifetime_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.access_token_lifetime_s = access_token_lifetime_s
        self.id_token_lifetime_s = id_token_lifetime_s
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self.key_id = hashlib.sha256(self._key).hexdigest()[:40]
        self._grants: dict[str, AccessGrant] = {}
        self._lock = threading.Lock()
        self.issued_id_tokens: list[dict[str, Any]] = []  # the claims of every ID token minted

    @staticmethod
    def unique_id(email: str) -> str:
        """A service account's numeric unique id (the `sub` and `azp` of its ID tokens), stable per email."""
        return str(100_000_000_000_000_000_000 + int(hashlib.sha256(email.encode()).hexdigest()[:15], 16))

    def mint_access_token(self, email: str, *, scopes: Collection[str] = (), lifetime_s: float | None = None) -> str:
        token = f"ya29.stand-in.{secrets.token_urlsafe(24)}"
        lifetime = self.access_token_lifetime_s if lifetime_s is None else lifetime_s
        with self._lock:
            self._grants[token] = AccessGrant(token, email, tuple(scopes), self.clock() + lifetime)
        return token

    def identity_of_access_token(self, token: str | None) -> str | None:
        """The email an unexpired access token was issued to, or None for any other string."""
        with self._lock:
            grant = self._grants.get(token or "")
        if grant is None or grant.expires_at <= self.clock():
            return None
        return grant.email

    def revoke_access_token(self, token: str) -> None:
        with self._lock:
            self._grants.pop(token, None)

    def grants(self) -> list[AccessGrant]:
        with self._lock:
            return list(self._grants.values())

    def mint_id_token(self, email: str, audience: str, *, lifetime_s: float | None = None) -> str:
        if not audience:
            raise ValueError("an ID token needs a non-empty audience")
        now = int(self.clock())
        lifetime = self.id_token_lifetime_s if lifetime_s is None else lifetime_s
        claims = {
            "aud": audience,
            "azp": self.unique_id(email),
            "email": email,
            "email_verified": True,
            "exp": now + int(lifetime),
            "iat": now,
            "iss": GOOGLE_ISSUER,
            "sub": self.unique_id(email),
        }
        header = {"alg": "HS256", "kid": self.key_id, "typ": "JWT"}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
        with self._lock:
            self.issued_id_tokens.append(claims)
        return f"{signing_input}.{_b64url(signature)}"

    def verify_id_token(self, token: str, audience: str | Collection[str]) -> dict[str, Any]:
        """The claims of a token this authority signed for `audience`, unexpired; InvalidToken otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("not a JWT (header.payload.signature)")
        try:
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
            signature = _unb64url(parts[2])
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidToken(f"malformed JWT: {exc}") from None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or header.get("kid") != self.key_id:
            raise InvalidToken("token was not signed by this authority's key")
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            raise InvalidToken("bad signature")
        if not isinstance(claims, dict):
            raise InvalidToken("claims are not a JSON object")
        if claims.get("iss") not in _ISSUERS:
            raise InvalidToken(f"wrong issuer {claims.get('iss')!r}")
        allowed = {audience} if isinstance(audience, str) else set(audience)
        if claims.get("aud") not in allowed:
            raise InvalidToken(f"wrong audience {claims.get('aud')!r}, expected {sorted(allowed)}")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self.clock():
            raise InvalidToken("token expired")
        if claims.get("email_verified") is not True or not claims.get("email"):
            raise InvalidToken("token carries no verified email")
        return claims


class MetadataServer(LoopbackServer):
    """The metadata server a Cloud Function's runtime service account gets its tokens from.

    Records every request (`requests`), including the ones refused for a missing `Metadata-Flavor`.
    """

    def __init__(
        self,
        authority: TokenAuthority,
        *,
        service_account_email: str = DEFAULT_SERVICE_ACCOUNT,
        project_id: str = "test-project",
        project_number: str = "123456789",
        region: str = "us-central1",
        scopes: Collection[str] = (CLOUD_PLATFORM_SCOPE,),
    ) -> None:
        super().__init__("metadata-server")
        self.authority = authority
        self.service_account_email = service_account_email
        self.project_id = project_id
        self.project_number = project_number
        self.region = region
        self.scopes = tuple(scopes)
        self._sdk_dir: str | None = None

    def start(self) -> MetadataServer:
        if self._sdk_dir is None:
            self._sdk_dir = tempfile.mkdtemp(prefix="no-gcloud-config-")
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._sdk_dir is not None:
            shutil.rmtree(self._sdk_dir, ignore_errors=True)
            self._sdk_dir = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs so that google-auth takes this server for the GCE metadata server.

        It also blanks GOOGLE_APPLICATION_CREDENTIALS and points CLOUDSDK_CONFIG at an empty folder, so a
        developer's own ADC file cannot win over the metadata server.
        """
        assert self._sdk_dir is not None, "the metadata server is not running"
        return {
            "GCE_METADATA_HOST": self.host,
            "GCE_METADATA_IP": self.host,
            "GCE_METADATA_MTLS_MODE": "none",
            "NO_GCE_CHECK": "false",
            "GOOGLE_APPLICATION_CREDENTIALS": "",
            "CLOUDSDK_CONFIG": self._sdk_dir,
            "GOOGLE_API_USE_CLIENT_CERTIFICATE": "false",
        }

    def child_env(self, base: Mapping[str, str] | None = None, *, seal: bool = True) -> dict[str, str]:
        """A whole environment for a subprocess: `base` (os.environ) without project overrides, plus `env`.

        With `seal`, HTTP(S) to anything but loopback goes to a closed local proxy (NO_EGRESS_ENV).
        """
        merged = {k: v for k, v in (os.environ if base is None else base).items() if k not in _MASKING_VARIABLES}
        merged.update(self.env)
        if seal:
            merged.update(NO_EGRESS_ENV)
        return merged

    def apply(self, monkeypatch: pytest.MonkeyPatch, *, seal: bool = False) -> None:
        """Points google-auth in this process here, including the host it cached at import."""
        from google.auth.compute_engine import _metadata

        for name in _MASKING_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**self.env, **(NO_EGRESS_ENV if seal else {})}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", self.host)
        monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", False)

    def token_requests(self) -> list[str]:
        """The paths of the token and identity requests received, in order."""
        return [r.path for r in self.requests if r.path.endswith(("/token", "/identity"))]

    def build_app(self) -> Flask:
        app = Flask("metadata-server")
        root = "/computeMetadata/v1"

        @app.after_request
        def _flavor(response: Response) -> Response:
            response.headers["Metadata-Flavor"] = "Google"
            response.headers["Server"] = "Metadata Server for Serverless"
            self.record(request, identity=None, status=response.status_code)
            return response

        @app.before_request
        def _require_flavor() -> Response | None:
            if request.headers.get("Metadata-Flavor") != "Google":
                return Response('Missing required header "Metadata-Flavor": "Google"\n', 403, mimetype="text/plain")
            return None

        @app.get("/")
        def ping() -> Response:
            return _text("computeMetadata/\n")

        @app.get(f"{root}/project/project-id")
        def project_id() -> Response:
            return _text(self.project_id)

        @app.get(f"{root}/project/numeric-project-id")
        def project_number() -> Response:
            return _text(self.project_number)

        @app.get(f"{root}/universe/universe-domain")
        def universe() -> Response:
            return _text("googleapis.com")

        @app.get(f"{root}/instance/region")
        def region() -> Response:
            return _text(f"projects/{self.project_number}/regions/{self.region}")

        @app.get(f"{root}/instance/zone")
        def zone() -> Response:
            return _text(f"projects/{self.project_number}/zones/{self.region}-1")

        @app.get(f"{root}/instance/service-accounts/")
        def accounts() -> Response:
            return _text(f"default/\n{self.service_account_email}/\n")

        @app.get(f"{root}/instance/service-accounts/<account>")
        @app.get(f"{root}/instance/service-accounts/<account>/")
        def account(account: str) -> Response:
            self._check_account(account)
            if request.args.get("recursive") == "true":
                info = {"aliases": ["default"], "email": self.service_account_email, "scopes": list(self.scopes)}
                return Response(json.dumps(info), mimetype="application/json")
            return _text("aliases\nemail\nidentity\nscopes\ntoken\n")

        @app.get(f"{root}/instance/service-accounts/<account>/email")
        def email(account: str) -> Response:
            self._check_account(account)
            return _text(self.service_account_email)

        @app.get(f"{root}/instance/service-accounts/<account>/scopes")
        def scopes(account: str) -> Response:
            self._check_account(account)
            return _text("".join(f"{scope}\n" for scope in self.scopes))

        # POST is google-auth's certificate-bound variant (an Agent Identity certificate is present).
        @app.route(f"{root}/instance/service-accounts/<account>/token", methods=["GET", "POST"])
        def token(account: str) -> Response:
            self._check_account(account)
            requested = [s for s in request.args.get("scopes", "").split(",") if s]
            lifetime = int(self.authority.access_token_lifetime_s) - 1
            access_token = self.authority.mint_access_token(
                self.service_account_email, scopes=requested or self.scopes, lifetime_s=lifetime
            )
            body = {"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"}
            return Response(json.dumps(body), mimetype="application/json")

        @app.route(f"{root}/instance/service-accounts/<account>/identity", methods=["GET", "POST"])
        def identity(account: str) -> Response:
            self._check_account(account)
            audience = request.args.get("audience", "")
            if not audience:
                return Response("non-empty audience parameter required\n", 400, mimetype="text/plain")
            if request.args.get("format", "standard") not in ("standard", "full"):
                return Response("format must be 'standard' or 'full'\n", 400, mimetype="text/plain")
            return _text(self.authority.mint_id_token(self.service_account_email, audience))

        @app.errorhandler(404)
        def not_found(_: Exception) -> Response:
            return Response("Not Found\n", 404, mimetype="text/plain")

        return app

    def _check_account(self, account: str) -> None:
        from werkzeug.exceptions import NotFound

        if account not in ("default", self.service_account_email):
            raise NotFound()


def _text(body: str) -> Response:
    return Response(body, mimetype="application/text")
