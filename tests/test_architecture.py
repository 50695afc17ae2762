"""The layering rules of `shared/`, checked on every module's imports (including the ones inside functions).

- the domain core (`shared.domain`) imports nothing but itself;
- pure conversions and computations (`formats`, `metrics`, `report`) import no port, no adapter, no SDK;
- stages import no adapter, not the composition root (`bootstrap`), and no other stage: they orchestrate
  through the ports they are handed and a few stage helpers (runner, watch, upload);
- adapters import no stage;
- only `bootstrap` (the composition root) chooses adapters, so it alone may import them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / "shared"

PORTS = {"shared.store.port", "shared.platform.port", "shared.training.port", "shared.chain.port"}
ADAPTERS = {
    "shared.store.gcs",
    "shared.store.local_folder",
    "shared.platform.labelbox_adapter",
    "shared.platform.local_model_run",
    "shared.platform.export_stream",
    "shared.training.vertex",
    "shared.training.vertex_custom",
    "shared.training.vertex_training",
    "shared.training.local_engine",
    "shared.chain.cloud_tasks",
    "shared.chain.http",
    "shared.chain.loopback",
    "shared.chain.timer",
}
ADAPTER_PACKAGES = ("shared.engine", "shared.gcp")  # the local engine and the Google client helpers
SDKS = (
    "google",
    "labelbox",
    "lbox",
    "requests",
    "urllib3",
    "grpc",
    "torch",
    "onnx",
    "onnxruntime",
    "functions_framework",
    "flask",
    "psutil",
)
STAGE_HELPERS = {
    "shared.stages.runner",
    "shared.stages.watch",
    "shared.stages.upload",
    "shared.stages.shards",
    "shared.stages.inference_plan",
    "shared.stages.inference_split",
    "shared.stages.inference_outcome",
    "shared.stages.inference_delivery",
    "shared.stages.inference_fan_in",
    "shared.stages.label_next_send",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SHARED.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it; `from a import b` counts as `a` and `a.b`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


FILES = sorted(SHARED.rglob("*.py"))
KNOWN = {module_name(p) for p in FILES}


def resolved(name: str) -> str:
    """`shared.a.b.Thing` -> the module `shared.a.b`; other names as they are."""
    while name.startswith("shared") and name not in KNOWN and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


MODULES = {module_name(p): {resolved(n) for n in imports_of(p)} for p in FILES}


def is_adapter(name: str) -> bool:
    return name in ADAPTERS or name.startswith(tuple(p + "." for p in ADAPTER_PACKAGES)) or name in ADAPTER_PACKAGES


def is_sdk(name: str) -> bool:
    return name.split(".")[0] in SDKS


def is_stage(name: str) -> bool:
    return name.startswith("shared.stages.") and name not in STAGE_HELPERS


def in_package(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def broken(rule: str) -> list[str]:
    out = []
    for module, imported in MODULES.items():
        for name in sorted(imported):
            if RULES[rule](module, name):
                out.append(f"{module} imports {name}")
    return out


RULES = {
    "the domain imports only the domain": lambda m, n: (
        in_package(m, "shared.domain") and n.startswith("shared") and not in_package(n, "shared.domain")
    ),
    "formats, metrics and report import no port, adapter or SDK": lambda m, n: (
        in_package(m, "shared.formats", "shared.metrics", "shared.report")
        and (n in PORTS or is_adapter(n) or is_sdk(n) or in_package(n, "shared.stages", "shared.bootstrap"))
    ),
    "stages import no adapter and not bootstrap": lambda m, n: (
        in_package(m, "shared.stages") and (is_adapter(n) or is_sdk(n) or n == "shared.bootstrap")
    ),
    "a stage imports no other stage": lambda m, n: is_stage(m) and is_stage(n) and n != m,
    "adapters import no stage": lambda m, n: is_adapter(m) and in_package(n, "shared.stages", "shared.bootstrap"),
    "only bootstrap imports adapters": lambda m, n: (
        is_adapter(n) and not is_adapter(m) and m not in {"shared.bootstrap", "shared.local_chain"}
    ),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_layering(rule: str) -> None:
    assert broken(rule) == []


def test_the_rules_see_the_imports_they_are_about() -> None:
    """The checks would pass on nothing: make sure the modules and their imports were read."""
    assert "shared.stages.etl" in MODULES and "shared.domain.run_record" in MODULES
    assert "shared.services" in MODULES["shared.stages.runner"]
    assert any(is_adapter(n) for n in MODULES["shared.bootstrap"])  # lazy imports inside functions count
    assert RULES["stages import no adapter and not bootstrap"]("shared.stages.etl", "shared.store.gcs")
    assert RULES["a stage imports no other stage"]("shared.stages.inference", "shared.stages.etl")
    assert not RULES["a stage imports no other stage"]("shared.stages.inference", "shared.stages.runner")
    assert RULES["formats, metrics and report import no port, adapter or SDK"](
        "shared.metrics.x", "shared.platform.port"
    )
