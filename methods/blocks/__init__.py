"""Shared network blocks, losses and anomaly-map pieces used by more than one method."""
