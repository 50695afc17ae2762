"""The custom-job machine checks: each refusal says what to change; the cost is rate times billed time."""

from __future__ import annotations

from shared.domain.machines import NO_ACCELERATOR, Machine, estimated_cost_usd


def test_the_defaults_and_a_t4_on_n1_fit() -> None:
    assert Machine("g2-standard-8", "NVIDIA_L4", 1).problem("us-central1") is None
    assert Machine("n1-standard-8", "NVIDIA_TESLA_T4", 2).problem("europe-west4") is None
    assert Machine("n1-standard-4", NO_ACCELERATOR, 0).problem("anywhere-1") is None  # CPU only


def test_each_refusal_says_what_to_change() -> None:
    assert "L4 GPUs" in (Machine("g2-standard-8", NO_ACCELERATOR, 0).problem("us-central1") or "")
    assert "carries 1 NVIDIA_L4, not 2" in (Machine("g2-standard-8", "NVIDIA_L4", 2).problem("us-central1") or "")
    assert "not 1, 2 or 4" in (Machine("n1-standard-8", "NVIDIA_TESLA_T4", 3).problem("us-central1") or "")
    region = Machine("g2-standard-8", "NVIDIA_L4", 1).problem("us-west2") or ""
    assert "not in us-west2" in region and "VERTEX_CUSTOM_REGION_CHECK=off" in region
    assert Machine("g2-standard-8", "NVIDIA_L4", 1).problem("us-west2", check_region=False) is None


def test_the_estimated_cost_is_the_hourly_rate_times_the_billed_time() -> None:
    t4 = Machine("n1-standard-8", "NVIDIA_TESLA_T4", 1)
    assert t4.usd_per_hour() == 0.4370 + 0.4025
    assert estimated_cost_usd(t4, 1800) == round((0.4370 + 0.4025) / 2, 4)
    assert estimated_cost_usd(t4, 3600, usd_per_hour=1.5) == 1.5
    assert estimated_cost_usd(t4, -5) == 0.0
