"""One router per resource: health, search, re-identification, predictions, indexing jobs."""

from polypindex.service.routers import health, jobs, predict, reid, search

__all__ = ["health", "jobs", "predict", "reid", "search"]
