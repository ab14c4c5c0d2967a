"""dissect_kernels: fused kernels and drivers for Network Dissection and GAN Dissection."""
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import TallyResult, tally
from dissect_kernels.stats.tail_sketch import TailSketch

__all__ = ["Geometry", "TailSketch", "TallyResult", "tally"]
__version__ = "0.1.0"
