"""dissect_kernels: fused kernels and drivers for Network Dissection and GAN Dissection."""
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.label_stats import LabelStats, label_stats
from dissect_kernels.ops.segment_stats import segment_stats
from dissect_kernels.ops.tally import TallyResult, tally
from dissect_kernels.results import DissectionResult, LayerResult, load_results, save_results
from dissect_kernels.stats.iou_tally import IoUTally

__all__ = [
    "DissectionResult", "Geometry", "IoUTally", "LabelStats", "LayerResult", "TallyResult",
    "label_stats", "load_results", "save_results", "segment_stats", "tally",
]
__version__ = "0.1.0"
