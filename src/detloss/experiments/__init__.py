"""Experiments and pictures over the public API: simulation, curves, landscapes, benchmarks."""
