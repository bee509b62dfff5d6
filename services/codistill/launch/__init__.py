"""Placing, wiring and supervising regions: Ray actors or in-process threads."""
