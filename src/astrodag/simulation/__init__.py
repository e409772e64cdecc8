"""Simulation pieces shared by the tracks: image rendering (:mod:`astrodag.simulation.render`)."""
