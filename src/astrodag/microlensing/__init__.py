"""Microlensing light curves: simulation, cadences, datasets, classification and analysis."""
