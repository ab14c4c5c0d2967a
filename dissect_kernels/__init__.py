"""dissect_kernels: fused kernels and drivers for Network Dissection and GAN Dissection."""
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import TallyResult, tally
from dissect_kernels.results import DissectionResult, LayerResult, load_results, save_results

__all__ = ["Geometry", "TallyResult", "tally",
           "DissectionResult", "LayerResult", "save_results", "load_results"]
__version__ = "0.1.0"
