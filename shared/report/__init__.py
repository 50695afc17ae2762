"""The run report: one self-contained HTML file with summary, data quality, metrics, curves and samples."""

from shared.report.data import ReportData, ReportSample
from shared.report.render import render_report

__all__ = ["ReportData", "ReportSample", "render_report"]
