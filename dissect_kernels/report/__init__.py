"""HTML reports for dissection results: the report page, exemplar strips and bar graphs."""
from dissect_kernels.report.exemplars import render_strip, save_strip, strip_path
from dissect_kernels.report.html import html_page, write_report
from dissect_kernels.report.plots import detector_bars, figure_svg, grouped_bar, svg_data_uri

__all__ = ["write_report", "html_page", "render_strip", "save_strip", "strip_path",
           "grouped_bar", "detector_bars", "figure_svg", "svg_data_uri"]
