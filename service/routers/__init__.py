"""One router per resource: health, search, re-identification, indexing jobs."""

from service.routers import health, jobs, reid, search

__all__ = ["health", "jobs", "reid", "search"]
