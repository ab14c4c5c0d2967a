"""Datasets: the Broden-format reader, the synthetic Broden-format generator, generic
(image, label map) datasets, and torchvision-free transforms."""
from dissect_kernels.data.broden import BrodenDataset, BrodenFormatError, CorruptSampleError
from dissect_kernels.data.generic import FolderSegmentationDataset, TensorSegmentationDataset
from dissect_kernels.data.synthetic import make_synthetic_broden, synthetic_concepts

__all__ = ["BrodenDataset", "BrodenFormatError", "CorruptSampleError", "FolderSegmentationDataset",
           "TensorSegmentationDataset", "make_synthetic_broden", "synthetic_concepts"]
