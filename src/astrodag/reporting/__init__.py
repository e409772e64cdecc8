"""Tables and figures for reports.

Only the table helpers are imported here; import ``astrodag.reporting.figures``
explicitly where plots are made, so that table-only jobs do not load matplotlib.
"""

from astrodag.reporting.tables import format_interval, format_mean_std, format_pvalue, to_markdown

__all__ = ["format_interval", "format_mean_std", "format_pvalue", "to_markdown"]
