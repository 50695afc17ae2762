"""Deletes the Vertex AI resources one deployment created, found by the label the chain puts on them.

`teardown.sh --delete-data` runs it. gcloud has no commands for datasets, training pipelines or batch
prediction jobs, so this speaks Vertex AI's REST API (v1) with the caller's gcloud access token, for the
custom jobs the engine trains and predicts in too (JobService's customJobs list, cancel and delete).
Running jobs are cancelled and waited for first, because Vertex refuses to delete a running job. What a
custom job trained is files in the bucket (teardown.sh deletes the bucket), not a Vertex AI model.
Standard library only: it runs on the deployer's machine, not in the project's virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

# In deletion order: jobs that read models and datasets go first.
KINDS = ("customJobs", "batchPredictionJobs", "trainingPipelines", "models", "datasets")
CANCELLABLE = ("customJobs", "batchPredictionJobs", "trainingPipelines")
ACTIVE_STATES = {
    "JOB_STATE_QUEUED",
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_CANCELLING",
    "JOB_STATE_PAUSED",
    "JOB_STATE_UPDATING",
    "PIPELINE_STATE_QUEUED",
    "PIPELINE_STATE_PENDING",
    "PIPELINE_STATE_RUNNING",
    "PIPELINE_STATE_CANCELLING",
    "PIPELINE_STATE_PAUSED",
}


class VertexError(Exception):
    """A Vertex AI call failed; the message names the call and the server's answer."""


@dataclass(frozen=True)
class Resource:
    kind: str
    name: str  # projects/<number>/locations/<region>/<kind>/<id>
    display_name: str
    state: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def __str__(self) -> str:
        shown = f" ({self.display_name})" if self.display_name else ""
        return f"{self.kind}/{self.name.rsplit('/', 1)[-1]}{shown}"


class VertexApi:
    def __init__(self, endpoint: str, token: str, timeout_s: float = 60.0) -> None:
        if not endpoint.startswith(("https://", "http://")):
            raise VertexError(f"Vertex AI endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.endpoint}/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = b"{}" if method == "POST" else None
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (scheme checked)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise VertexError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise VertexError(f"{method} {path}: {exc.reason}") from None
        return json.loads(body) if body.strip() else {}

    def list(self, parent: str, kind: str, label_filter: str) -> list[Resource]:
        found: list[Resource] = []
        query = {"filter": label_filter, "pageSize": "100"}
        while True:
            page = self.call("GET", f"{parent}/{kind}", query)
            for item in page.get(kind, []):
                found.append(Resource(kind, item["name"], item.get("displayName", ""), item.get("state", "")))
            token = page.get("nextPageToken")
            if not token:
                return found
            query = {**query, "pageToken": token}

    def state(self, resource: Resource) -> str:
        return str(self.call("GET", resource.name).get("state", ""))


def label_filter(label: str) -> str:
    """`key=value` -> Vertex AI's list filter for that label."""
    key, sep, value = label.partition("=")
    if not sep or not key or not value:
        raise VertexError(f"--label must be key=value, got {label!r}")
    return f'labels.{key}="{value}"'


def access_token() -> str:
    try:
        result = subprocess.run(["gcloud", "auth", "print-access-token"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise VertexError("gcloud is not on PATH") from None
    token = result.stdout.strip()
    if result.returncode != 0 or not token:
        raise VertexError("could not get an access token from gcloud (run: gcloud auth login)")
    return token


def wait_until_stopped(api: VertexApi, resource: Resource, wait_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        if api.state(resource) not in ACTIVE_STATES:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def clean(api: VertexApi, parent: str, label: str, *, dry_run: bool, wait_s: float, poll_s: float) -> int:
    """Cancels and deletes every labelled resource; returns how many could not be deleted."""
    flt = label_filter(label)
    failures = 0
    for kind in KINDS:
        resources = api.list(parent, kind, flt)
        if not resources:
            print(f"  no {kind} labelled {label}")
        for resource in resources:
            try:
                if resource.active and kind in CANCELLABLE:
                    if dry_run:
                        print(f"  would cancel {resource} ({resource.state})")
                    else:
                        if resource.state not in {"JOB_STATE_CANCELLING", "PIPELINE_STATE_CANCELLING"}:
                            api.call("POST", f"{resource.name}:cancel")
                            print(f"  cancelled {resource}")
                        if not wait_until_stopped(api, resource, wait_s, poll_s):
                            print(f"  {resource} is still stopping; run teardown again later", file=sys.stderr)
                            failures += 1
                            continue
                if dry_run:
                    print(f"  would delete {resource}")
                else:
                    api.call("DELETE", resource.name)
                    print(f"  deleted {resource}")
            except VertexError as exc:
                print(f"  could not delete {resource}: {exc}", file=sys.stderr)
                failures += 1
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--label", required=True, help="key=value, e.g. lb_chain=lb-chain")
    parser.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    parser.add_argument("--wait-seconds", type=float, default=900.0, help="how long to wait for a cancel")
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    endpoint = os.environ.get("VERTEX_API_ENDPOINT") or f"https://{args.region}-aiplatform.googleapis.com"
    parent = f"projects/{args.project}/locations/{args.region}"
    try:
        api = VertexApi(endpoint, access_token())
        failures = clean(
            api, parent, args.label, dry_run=args.dry_run, wait_s=args.wait_seconds, poll_s=args.poll_seconds
        )
    except VertexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if failures:
        print(f"error: {failures} Vertex AI resource(s) were not deleted (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
