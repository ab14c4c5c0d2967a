"""dissect_kernels: fused kernels and drivers for Network Dissection and GAN Dissection."""
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import TallyResult, tally
from dissect_kernels.stats.quantile import QuantileSketch
from dissect_kernels.stats.topk import TopK

__all__ = ["Geometry", "QuantileSketch", "TallyResult", "TopK", "tally"]
__version__ = "0.1.0"
