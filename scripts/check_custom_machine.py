"""Checks the machine the VERTEX_CUSTOM_* settings ask Vertex AI custom training for, before deploy.sh
touches the cloud: an accelerator that does not fit its machine, or that Vertex does not offer in the
region, would otherwise be refused only by the first training, as a 400 in the train function's log.

The checks are `shared.domain.machines`' (the same the functions run at their start). deploy.sh passes
the settings as arguments (an empty one means its default) and stops with the message printed here.
Prints the machine on success; exit code 1 and one line on stderr when something must change.

Standard library only, Python 3.8 or later: it runs on the deployer's machine, like stage_function.py.

    python scripts/check_custom_machine.py --region us-central1 [--machine-type g2-standard-8]
        [--accelerator-type NVIDIA_L4] [--accelerator-count 1] [--region-check on|off]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.domain.machines import DEFAULT_ACCELERATOR, DEFAULT_MACHINE_TYPE, Machine


def problem_and_machine(
    region: str, machine_type: str, accelerator_type: str, accelerator_count: str, region_check: str
) -> tuple[str | None, str]:
    """(what to change or None, the machine as it would be asked for); empty settings take their defaults."""
    machine_type = machine_type or DEFAULT_MACHINE_TYPE
    accelerator_type = accelerator_type or DEFAULT_ACCELERATOR
    count_text = accelerator_count or "1"
    if not re.fullmatch(r"[0-9]{1,3}", count_text):
        return f"VERTEX_CUSTOM_ACCELERATOR_COUNT={accelerator_count} is not a whole number", ""
    if (region_check or "on") not in ("on", "off"):
        return f"VERTEX_CUSTOM_REGION_CHECK={region_check} must be on or off", ""
    machine = Machine(machine_type, accelerator_type, int(count_text))
    problem = machine.problem(region, check_region=region_check != "off")
    if problem is not None:
        settings = (
            f"VERTEX_CUSTOM_MACHINE_TYPE={machine_type}, VERTEX_CUSTOM_ACCELERATOR_TYPE={accelerator_type}, "
            f"VERTEX_CUSTOM_ACCELERATOR_COUNT={count_text}, REGION={region}"
        )
        return f"the custom-training machine ({settings}) cannot be used: {problem}", machine.describe()
    return None, machine.describe()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--machine-type", default="", help=f"default {DEFAULT_MACHINE_TYPE}")
    parser.add_argument("--accelerator-type", default="", help=f"default {DEFAULT_ACCELERATOR}")
    parser.add_argument("--accelerator-count", default="", help="default 1")
    parser.add_argument("--region-check", default="", help="on (default) or off")
    args = parser.parse_args(argv)
    problem, described = problem_and_machine(
        args.region, args.machine_type, args.accelerator_type, args.accelerator_count, args.region_check
    )
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    unchecked = " (region not checked: VERTEX_CUSTOM_REGION_CHECK=off)" if args.region_check == "off" else ""
    print(f"{described} in {args.region}{unchecked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
