"""Small helpers shared by the Lightning module and the callbacks (logging cadence, per-rank state)."""
