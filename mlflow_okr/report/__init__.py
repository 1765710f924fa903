"""The quarter-end report: `build_report` reads the cycle from MLflow, `render` writes one format."""

from __future__ import annotations

from collections.abc import Callable

from mlflow_okr.errors import InputError
from mlflow_okr.report.model import Report, build_report

FORMATS = ("md", "html", "json", "csv")


def render(report: Report, output_format: str = "md") -> str:
    """The report as Markdown, HTML, JSON or CSV text."""
    from mlflow_okr.report.html import render_html
    from mlflow_okr.report.markdown import render_markdown
    from mlflow_okr.report.tabular import render_csv, render_json

    renderers: dict[str, Callable[[Report], str]] = {
        "md": render_markdown,
        "html": render_html,
        "json": render_json,
        "csv": render_csv,
    }
    if output_format not in renderers:
        raise InputError(f"unknown report format {output_format!r}: use one of {', '.join(FORMATS)}")
    return renderers[output_format](report)


__all__ = ["FORMATS", "Report", "build_report", "render"]
