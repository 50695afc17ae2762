"""Your own model types: the modules `CHAIN_MODEL_TYPE_MODULES` names, imported once at start-up.

`CHAIN_MODEL_TYPE_MODULES` is a comma-separated list of module names (`shared.my_types,
shared.more_types`); each module registers its model types when imported (`shared.domain.model_types.
register`). `shared.config.load_settings` calls `load` before anything offers or looks up a model type,
so every function process (and `shared.local_chain`, which starts them with its environment) has the same
types: `GET /models` lists them, the webhook accepts them, ETL and inference apply their conversions.

The deployed functions ship `shared/` (scripts/stage_function.py): a module placed under `shared/` is
deployed with them. README, "Add your own model type".
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping

VARIABLE = "CHAIN_MODEL_TYPE_MODULES"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# A module whose import failed, with the problem: asked again, it is not imported again (a half-run module
# would otherwise fail differently, on the types it registered the first time).
_failed: dict[str, str] = {}


def module_names(env: Mapping[str, str]) -> list[str]:
    """The module names `CHAIN_MODEL_TYPE_MODULES` lists, in order, blanks left out."""
    return [name.strip() for name in env.get(VARIABLE, "").split(",") if name.strip()]


def load(env: Mapping[str, str]) -> list[str]:
    """Imports every module `CHAIN_MODEL_TYPE_MODULES` names (a module imported before is not run again);
    returns the problems, one per module that could not be imported, each naming it (none: all loaded)."""
    problems = []
    for name in module_names(env):
        if name not in _failed:
            problem = _import(name)
            if problem is None:
                continue
            _failed[name] = problem
        problems.append(_failed[name])
    return problems


def _import(name: str) -> str | None:
    if not _MODULE_NAME.fullmatch(name):
        return f"{VARIABLE}: {name!r} is not a module name (dotted, like shared.my_model_types)"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return (
                f"{VARIABLE}: no module named {name!r} (place it under shared/, which the functions ship, "
                "or on PYTHONPATH)"
            )
        return f"{VARIABLE}: importing {name!r} failed: ModuleNotFoundError: {exc}"
    except Exception as exc:  # the module's own error, a duplicate or bad model type among them
        return f"{VARIABLE}: importing {name!r} failed: {type(exc).__name__}: {exc}"
    return None
