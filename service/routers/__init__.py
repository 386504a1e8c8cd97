"""One router per resource: health, search, re-identification."""

from service.routers import health, reid, search

__all__ = ["health", "reid", "search"]
