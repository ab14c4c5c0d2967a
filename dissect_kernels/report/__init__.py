"""HTML reports: one report site per run (index.html linking a page per layer and every other
page the run wrote), exemplar strips and figures. See report.site for registering a page."""
from dissect_kernels.report.dissection import write_report
from dissect_kernels.report.exemplars import render_strip, save_strip, strip_path
from dissect_kernels.report.html import html_page
from dissect_kernels.report.plots import detector_bars, figure_svg, grouped_bar, svg_data_uri
from dissect_kernels.report.site import INDEX_FILE, Site, add_page

__all__ = ["write_report", "html_page", "render_strip", "save_strip", "strip_path",
           "grouped_bar", "detector_bars", "figure_svg", "svg_data_uri", "Site", "add_page", "INDEX_FILE"]
