"""A fake `gcloud` that keeps a small Google Cloud project in a JSON file.

deploy.sh and teardown.sh run against it as they would against the real CLI: lookups answer from the
state (NOT_FOUND when a resource is absent), creates fail with ALREADY_EXISTS when it is present,
commands on an API that is not enabled fail as the real ones do, and a function deploy checks what
the real service checks (runtime account exists and may read the mounted secrets, gen limits). Every
call is appended to a log: its argv and the names of environment variables holding a secret marker.
Only the output formats the scripts use are supported; anything else fails loudly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

SECRET_MARKER = "S3CR3T"  # every fake secret value in the tests contains it
GEN1_MEMORY = {"128MB", "256MB", "512MB", "1024MB", "2048MB", "4096MB", "8192MB"}
SERVICE_OF_GROUP = {
    "functions": "cloudfunctions.googleapis.com",
    "tasks": "cloudtasks.googleapis.com",
    "secrets": "secretmanager.googleapis.com",
    "storage": "storage.googleapis.com",
    "iam": "iam.googleapis.com",
}


class Failure(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def empty_state(project: str = "demo-proj", number: str = "123456789012") -> dict[str, Any]:
    return {
        "project": project,
        "number": number,
        "services": ["serviceusage.googleapis.com", "cloudresourcemanager.googleapis.com"],
        "project_iam": [],
        "buckets": {},
        "queues": {},
        "secrets": {},
        "service_accounts": {},
        "functions": {},
    }


def parse(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    words: list[str] = []
    flags: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            if key in flags:
                raise Failure(f"flag --{key} given twice", 2)
            flags[key] = value if sep else ""
        else:
            words.append(arg)
    return words, flags


def field(resource: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(resource, dict):
            return ""
        resource = resource.get(part, "")
    return resource


def render(resource: dict[str, Any], fmt: str | None) -> str:
    if fmt is None:
        raise Failure("the fake needs an explicit --format for describe", 2)
    if fmt == "none":
        return ""
    match = re.fullmatch(r"(value|csv\[no-heading\])\(([^)]*)\)", fmt)
    if not match:
        raise Failure(f"unsupported --format {fmt!r}", 2)
    values = [str(field(resource, f.strip())) for f in match[2].split(",")]
    return ("\t" if match[1] == "value" else ",").join(values) + "\n"


def labels_of(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


class Project:
    def __init__(self, state: dict[str, Any]) -> None:
        self.s = state

    # -- helpers
    def need_api(self, group: str) -> None:
        service = SERVICE_OF_GROUP.get(group)
        if service and service not in self.s["services"]:
            raise Failure(
                f"ERROR: (gcloud.{group}) PERMISSION_DENIED: {service} has not been used in project "
                f"{self.s['project']} before or it is disabled. reason: SERVICE_DISABLED"
            )

    def check_project(self, words: list[str], flags: dict[str, str]) -> None:
        given = words[2] if words[0] == "projects" and len(words) > 2 else flags.get("project")
        if given != self.s["project"]:
            raise Failure(f"expected project {self.s['project']}, got {given!r}", 2)

    @staticmethod
    def bind(policy: list[list[str]], member: str, role: str) -> None:
        if not member or not role:
            raise Failure("--member and --role are required", 2)
        if [member, role] not in policy:
            policy.append([member, role])

    @staticmethod
    def unbind(policy: list[list[str]], member: str, role: str) -> None:
        if [member, role] not in policy:
            raise Failure("ERROR: Policy binding with the specified principal, role, and condition not found!")
        policy.remove([member, role])

    def get(self, table: str, key: str, what: str) -> dict[str, Any]:
        if key not in self.s[table]:
            raise Failure(f"ERROR: NOT_FOUND: {what} [{key}] not found")
        return self.s[table][key]

    def create(self, table: str, key: str, what: str, value: dict[str, Any]) -> None:
        if key in self.s[table]:
            raise Failure(f"ERROR: ALREADY_EXISTS: {what} [{key}] already exists")
        self.s[table][key] = value

    # -- commands
    def handle(self, words: list[str], flags: dict[str, str], stdin: str) -> str:
        fmt = flags.get("format")
        group = words[0] if words else ""
        if words[:1] == ["beta"]:
            words = words[1:]
        self.need_api(group)
        if words == ["auth", "print-access-token"]:
            return "fake-access-token\n"
        self.check_project(words, flags)
        match words:
            case ["projects", "describe", project]:
                return render({"projectNumber": self.s["number"], "projectId": project}, fmt)
            case ["projects", "get-iam-policy", _]:
                member = flags["filter"].removeprefix("bindings.members:")
                roles = [r for m, r in self.s["project_iam"] if m == member]
                return "".join(render({"bindings": {"role": r}}, fmt) for r in roles)
            case ["projects", "add-iam-policy-binding", _]:
                self.bind(self.s["project_iam"], flags["member"], flags["role"])
            case ["projects", "remove-iam-policy-binding", _]:
                self.unbind(self.s["project_iam"], flags["member"], flags["role"])
            case ["services", "list"]:
                return "".join(render({"config": {"name": n}}, fmt) for n in self.s["services"])
            case ["services", "enable", *services]:
                self.s["services"] += [s for s in services if s not in self.s["services"]]
            case ["services", "identity", "create"]:
                agent = f"serviceAccount:service-{self.s['number']}@gcp-sa-aiplatform.iam.gserviceaccount.com"
                self.bind(self.s["project_iam"], agent, "roles/aiplatform.serviceAgent")
            case ["storage", *rest]:
                return self.storage(rest, flags, fmt)
            case ["tasks", "queues", verb, name]:
                return self.queue(verb, name, flags, fmt)
            case ["secrets", verb, name]:
                return self.secret(verb, name, flags, fmt, stdin)
            case ["iam", "service-accounts", verb, name]:
                return self.service_account(verb, name, flags, fmt)
            case ["functions", verb, name]:
                return self.function(verb, name, flags, fmt)
            case _:
                raise Failure(f"fake gcloud does not know: {' '.join(words)}", 2)
        return render({}, fmt) if fmt else ""

    def storage(self, rest: list[str], flags: dict[str, str], fmt: str | None) -> str:
        match rest:
            case ["buckets", verb, uri] if uri.startswith("gs://"):
                name = uri[5:]
            case ["rm", uri] if uri.startswith("gs://") and "recursive" in flags:
                self.get("buckets", uri[5:], "bucket")
                del self.s["buckets"][uri[5:]]
                return ""
            case ["objects", "describe", uri] if uri.startswith("gs://") and "raw" in flags:
                bucket_name, _, path = uri[5:].partition("/")
                objects = self.get("buckets", bucket_name, "bucket").get("objects", {})
                if path not in objects:
                    raise Failure(f"ERROR: (gcloud.storage.objects.describe) NotFoundError: {uri} not found: 404.")
                return render(objects[path], fmt)
            case ["cp", source, uri] if uri.startswith("gs://") and not source.startswith("gs://"):
                bucket_name, _, path = uri[5:].partition("/")
                bucket = self.get("buckets", bucket_name, "bucket")
                data = Path(source).read_bytes()
                bucket.setdefault("objects", {})[path] = {
                    "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324 (GCS's own)
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "uploads": bucket.get("objects", {}).get(path, {}).get("uploads", 0) + 1,
                }
                return ""
            case _:
                raise Failure(f"fake gcloud does not know: storage {' '.join(rest)}", 2)
        if verb == "create":
            if not {"location", "uniform-bucket-level-access"} <= flags.keys():
                raise Failure("bucket create without --location or --uniform-bucket-level-access", 2)
            self.create(
                "buckets",
                name,
                "bucket",
                {
                    "location": flags["location"].upper(),
                    "labels": {},
                    "iam": [],
                    "ubla": True,
                    "public_access_prevention": "public-access-prevention" in flags,
                    "objects": {},
                },
            )
            return ""
        bucket = self.get("buckets", name, "bucket")
        if verb == "describe":
            return render(bucket, fmt)
        if verb == "update":
            bucket["labels"].update(labels_of(flags.get("update-labels", "")))
            if "lifecycle-file" in flags:
                bucket["lifecycle"] = json.loads(Path(flags["lifecycle-file"]).read_text())
            return ""
        if verb == "add-iam-policy-binding":
            self.bind(bucket["iam"], flags["member"], flags["role"])
            return ""
        if verb == "remove-iam-policy-binding":
            self.unbind(bucket["iam"], flags["member"], flags["role"])
            return ""
        raise Failure(f"fake gcloud does not know: storage buckets {verb}", 2)

    def queue(self, verb: str, name: str, flags: dict[str, str], fmt: str | None) -> str:
        key = f"{flags['location']}/{name}"
        if verb == "create":
            self.create("queues", key, "queue", {"state": "RUNNING", "iam": [], "flags": flags})
            return ""
        queue = self.get("queues", key, "queue")
        if verb == "describe":
            return render(queue, fmt)
        if verb == "update":
            queue["flags"] = {**queue["flags"], **flags}
            return ""
        if verb == "delete":
            del self.s["queues"][key]
            return ""
        if verb == "add-iam-policy-binding":
            self.bind(queue["iam"], flags["member"], flags["role"])
            return ""
        raise Failure(f"fake gcloud does not know: tasks queues {verb}", 2)

    def secret(self, verb: str, name: str, flags: dict[str, str], fmt: str | None, stdin: str) -> str:
        if verb == "create":
            if flags.get("data-file") != "-":
                raise Failure("secrets must be created from stdin", 2)
            self.create(
                "secrets",
                name,
                "secret",
                {"labels": labels_of(flags.get("labels", "")), "payload": stdin, "iam": [], "name": name},
            )
            return ""
        secret = self.get("secrets", name, "secret")
        if verb == "describe":
            return render(secret, fmt)
        if verb == "delete":
            del self.s["secrets"][name]
            return ""
        if verb == "add-iam-policy-binding":
            self.bind(secret["iam"], flags["member"], flags["role"])
            return ""
        raise Failure(f"fake gcloud does not know: secrets {verb}", 2)

    def service_account(self, verb: str, name: str, flags: dict[str, str], fmt: str | None) -> str:
        if verb == "create":
            email = f"{name}@{self.s['project']}.iam.gserviceaccount.com"
            self.create("service_accounts", email, "service account", {"email": email, "iam": []})
            return ""
        account = self.get("service_accounts", name, "service account")
        if verb == "describe":
            return render(account, fmt)
        if verb == "delete":
            del self.s["service_accounts"][name]
            return ""
        if verb == "add-iam-policy-binding":
            self.bind(account["iam"], flags["member"], flags["role"])
            return ""
        raise Failure(f"fake gcloud does not know: iam service-accounts {verb}", 2)

    def function(self, verb: str, name: str, flags: dict[str, str], fmt: str | None) -> str:
        key = f"{flags['region']}/{name}"
        if verb == "deploy":
            self.deploy(key, name, flags)
            return ""
        function = self.get("functions", key, "function")
        if verb == "describe":
            return render(function, fmt)
        if verb == "delete":
            del self.s["functions"][key]
            return ""
        if verb == "add-iam-policy-binding":
            self.bind(function["iam"], flags["member"], flags["role"])
            return ""
        if verb == "add-invoker-policy-binding":
            role = "roles/run.invoker" if function["gen"] == 2 else "roles/cloudfunctions.invoker"
            self.bind(function["iam"], flags["member"], role)
            return ""
        raise Failure(f"fake gcloud does not know: functions {verb}", 2)

    def deploy(self, key: str, name: str, flags: dict[str, str]) -> None:
        gen = 2 if "gen2" in flags else 1 if "no-gen2" in flags else 0
        if not gen:
            raise Failure("deploy without --gen2/--no-gen2", 2)
        existing = self.s["functions"].get(key)
        if existing and existing["gen"] != gen:
            raise Failure(f"ERROR: function {name} exists as gen{existing['gen']}")
        timeout = int(flags["timeout"].removesuffix("s"))
        if timeout > (540 if gen == 1 else 3600):
            raise Failure(f"ERROR: INVALID_ARGUMENT: timeout {timeout}s is too long for gen{gen}")
        if gen == 1 and flags["memory"] not in GEN1_MEMORY:
            raise Failure(f"ERROR: INVALID_ARGUMENT: gen1 memory {flags['memory']}")
        account = flags["service-account"]
        if account not in self.s["service_accounts"]:
            raise Failure(f"ERROR: INVALID_ARGUMENT: service account {account} does not exist")
        for mount in flags["set-secrets"].split(","):
            secret = mount.split("=", 1)[1].split(":", 1)[0]
            grants = self.get("secrets", secret, "secret")["iam"]
            if [f"serviceAccount:{account}", "roles/secretmanager.secretAccessor"] not in grants:
                raise Failure(f"ERROR: {account} may not access secret {secret}")
        import yaml  # only deploys need it

        env = yaml.safe_load(Path(flags["env-vars-file"]).read_text())
        if not all(isinstance(v, str) for v in env.values()):
            raise Failure("ERROR: env-vars-file values must be strings")
        source = Path(flags["source"])
        if not (source / "main.py").is_file() or not (source / "requirements.txt").is_file():
            raise Failure(f"ERROR: {source} lacks main.py or requirements.txt")
        region, project = flags["region"], flags["project"]
        function = existing or {"gen": gen, "labels": {}, "iam": []}
        function.update(
            name=name,
            env=env,
            flags=flags,
            source_files=sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()),
            requirements=(source / "requirements.txt").read_text(),
            deploys=function.get("deploys", 0) + 1,
        )
        function["labels"].update(labels_of(flags.get("update-labels", "")))
        if gen == 1:
            function["httpsTrigger"] = {"url": f"https://{region}-{project}.cloudfunctions.net/{name}"}
        else:
            digest = hashlib.sha256(name.encode()).hexdigest()[:10]
            function["serviceConfig"] = {"uri": f"https://{name}-{digest}-uc.a.run.app"}
            function["url"] = f"https://{region}-{project}.cloudfunctions.net/{name}"
        public = ["allUsers", "roles/run.invoker" if gen == 2 else "roles/cloudfunctions.invoker"]
        if "allow-unauthenticated" in flags and public not in function["iam"]:
            function["iam"].append(public)
        if "no-allow-unauthenticated" in flags and public in function["iam"]:
            function["iam"].remove(public)
        self.s["functions"][key] = function


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_GCLOUD_STATE"])
    leaked = sorted(k for k, v in os.environ.items() if SECRET_MARKER in v)
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(json.dumps({"argv": ["gcloud", *argv], "leaked_env": leaked}) + "\n")
    words, flags = parse(argv)
    stdin = sys.stdin.read() if flags.get("data-file") == "-" else ""
    state = json.loads(state_path.read_text())
    try:
        out = Project(state).handle(words, flags, stdin)
    except Failure as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except KeyError as exc:
        print(f"fake gcloud: missing flag {exc}", file=sys.stderr)
        return 2
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
