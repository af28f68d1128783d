"""Evaluation protocols, metrics, statistics and table rendering."""
