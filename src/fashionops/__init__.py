"""fashionops: fashion product classification and visual search as a repeatable pipeline."""

__version__ = "0.1.0"
