"""Errors raised by the data layer."""


class CorruptSampleError(ValueError):
    """One sample (an image or its label map) cannot be read; drivers count and skip it."""
