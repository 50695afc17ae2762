"""The machines a Vertex AI custom job may ask for, what they cost, and the checks made before asking.

Vertex refuses a CustomJob whose accelerator does not fit its machine, or is not offered in the job's
region, only after the request, as a 400 the user reads in the function's log. These checks run when
the configuration is loaded (at deploy and at every function's start) and again for a run's own
override at `train`, so the model run fails before anything is billed, with a message that says what
to change.

The tables follow Google's published pages (machine families and which GPU attaches to them, regions
where Vertex AI training offers each GPU, us-central1 on-demand prices); they were not checked against
a live project here, and Google changes them: `VERTEX_CUSTOM_REGION_CHECK=off` skips the region check,
and `VERTEX_CUSTOM_HOURLY_USD` replaces the estimated rate with your own.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_ACCELERATOR = "ACCELERATOR_TYPE_UNSPECIFIED"


@dataclass(frozen=True)
class Accelerator:
    name: str  # the AcceleratorType enum value Vertex's API takes
    machine_prefixes: tuple[str, ...]  # the machine families it attaches to
    regions: frozenset[str]
    usd_per_hour: float  # per accelerator, on top of the machine (0 where the machine's price includes it)


_T4_REGIONS = frozenset(
    {
        "us-central1",
        "us-east1",
        "us-east4",
        "us-west1",
        "us-west2",
        "us-west4",
        "northamerica-northeast1",
        "southamerica-east1",
        "europe-west1",
        "europe-west2",
        "europe-west3",
        "europe-west4",
        "asia-east1",
        "asia-northeast1",
        "asia-northeast3",
        "asia-south1",
        "asia-southeast1",
        "australia-southeast1",
    }
)
_L4_REGIONS = frozenset(
    {
        "us-central1",
        "us-east1",
        "us-east4",
        "us-west1",
        "us-west4",
        "europe-west1",
        "europe-west2",
        "europe-west3",
        "europe-west4",
        "asia-east1",
        "asia-northeast1",
        "asia-northeast3",
        "asia-south1",
        "asia-southeast1",
    }
)

ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in (
        Accelerator("NVIDIA_L4", ("g2-standard-",), _L4_REGIONS, 0.0),  # the G2 price includes its L4
        Accelerator("NVIDIA_TESLA_T4", ("n1-standard-", "n1-highmem-"), _T4_REGIONS, 0.4025),
    )
}

# us-central1 on-demand Vertex AI custom training rates, USD per hour (G2: the machine with its L4 GPUs).
MACHINE_USD_PER_HOUR: dict[str, float] = {
    "n1-standard-4": 0.2185,
    "n1-standard-8": 0.4370,
    "n1-standard-16": 0.8740,
    "n1-highmem-8": 0.5442,
    "g2-standard-4": 0.8129,
    "g2-standard-8": 0.9818,
    "g2-standard-12": 1.1507,
    "g2-standard-16": 1.3196,
    "g2-standard-32": 1.9954,
}
# L4 count per G2 machine: the G2 family fixes it
G2_GPUS = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1, "g2-standard-32": 1}

DEFAULT_MACHINE_TYPE = "g2-standard-8"
DEFAULT_ACCELERATOR = "NVIDIA_L4"
# The machine a batch prediction job runs on: one T4 predicts thousands of images in minutes.
DEFAULT_PREDICTION_MACHINE_TYPE = "n1-standard-4"
DEFAULT_PREDICTION_ACCELERATOR = "NVIDIA_TESLA_T4"


@dataclass(frozen=True)
class Machine:
    machine_type: str
    accelerator_type: str
    accelerator_count: int

    def problem(self, region: str, *, check_region: bool = True) -> str | None:
        """What Vertex would refuse about this machine in `region`, said as what to change; None if nothing."""
        if self.machine_type not in MACHINE_USD_PER_HOUR:
            return (
                f"machine type {self.machine_type!r} is not one this chain knows for custom training; "
                f"use one of {', '.join(sorted(MACHINE_USD_PER_HOUR))}"
            )
        if self.accelerator_type == NO_ACCELERATOR:
            if self.machine_type in G2_GPUS:
                return f"{self.machine_type} always carries NVIDIA_L4 GPUs: set the accelerator to NVIDIA_L4"
            return None
        accelerator = ACCELERATORS.get(self.accelerator_type)
        if accelerator is None:
            return (
                f"accelerator {self.accelerator_type!r} is not one this chain knows for custom training; use "
                f"{', '.join(sorted(ACCELERATORS))} or {NO_ACCELERATOR} (CPU only)"
            )
        if not self.machine_type.startswith(accelerator.machine_prefixes):
            families = " or ".join(f"{p}*" for p in accelerator.machine_prefixes)
            return (
                f"{self.accelerator_type} attaches to {families} machines, not {self.machine_type}; "
                f"change the machine type or the accelerator"
            )
        if self.machine_type in G2_GPUS and self.accelerator_count != G2_GPUS[self.machine_type]:
            return f"{self.machine_type} carries {G2_GPUS[self.machine_type]} NVIDIA_L4, not {self.accelerator_count}"
        if self.accelerator_count not in (1, 2, 4):
            return f"accelerator count {self.accelerator_count} is not 1, 2 or 4"
        if check_region and region not in accelerator.regions:
            return (
                f"Vertex AI training offers {self.accelerator_type} in {', '.join(sorted(accelerator.regions))}, "
                f"not in {region}: pick another accelerator or region (or VERTEX_CUSTOM_REGION_CHECK=off if "
                "Google has added it there since)"
            )
        return None

    def usd_per_hour(self) -> float:
        """The estimated on-demand rate of this machine with its accelerators (us-central1 prices)."""
        accelerator = ACCELERATORS.get(self.accelerator_type)
        extra = accelerator.usd_per_hour * self.accelerator_count if accelerator else 0.0
        return MACHINE_USD_PER_HOUR.get(self.machine_type, 0.0) + extra

    def describe(self) -> str:
        if self.accelerator_type == NO_ACCELERATOR:
            return self.machine_type
        return f"{self.machine_type} + {self.accelerator_count} x {self.accelerator_type}"


def estimated_cost_usd(machine: Machine, elapsed_s: float, *, usd_per_hour: float | None = None) -> float:
    """What a job on `machine` that ran `elapsed_s` costs at the hourly rate (Vertex bills by the second)."""
    rate = machine.usd_per_hour() if usd_per_hour is None else usd_per_hour
    return round(rate * max(elapsed_s, 0.0) / 3600, 4)
