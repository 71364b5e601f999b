"""Self-contained HTML views: a run's token lattice with attention on click
(:func:`write_run_report`), two runs side by side (:func:`write_compare_report`) and the research
findings (:func:`write_findings_html`). Pages work from ``file://`` with no network."""

from tempo_jax.report.findings import markdown, write_findings_html
from tempo_jax.report.run import capture_dir, run_data, write_compare_report, write_run_report

__all__ = ["capture_dir", "markdown", "run_data", "write_compare_report", "write_findings_html",
           "write_run_report"]
