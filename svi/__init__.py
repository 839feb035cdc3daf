"""svi: Stable Video Infinity, Error-Recycling Fine-Tuning for infinite-length video generation."""

__version__ = "0.1.0"
