"""Metrics, evaluation, calibration and decision rules (re-ID, grouping, probes)."""
