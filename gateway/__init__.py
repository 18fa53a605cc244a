"""Crossover: the HTTP surface and request pipeline. A thin layer over `classifier` and `providers`."""

__version__ = "0.1.0"
