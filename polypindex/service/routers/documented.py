"""Routers whose endpoints are documented by their docstrings.

An endpoint's docstring is its OpenAPI description, with each paragraph joined into
one line (so the source can wrap it like any docstring while the published text
stays one paragraph per blank-line-separated block). A ``description=`` given to
the route decorator still wins.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute


def reflow(doc: str | None) -> str | None:
    """A docstring as a description: paragraphs kept, each one on a single line."""
    if not doc:
        return None
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(doc))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


class DocumentedRoute(APIRoute):
    """An :class:`APIRoute` whose default description is its endpoint's reflowed docstring."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if kwargs.get("description") is None:
            kwargs["description"] = reflow(endpoint.__doc__)
        super().__init__(path, endpoint, **kwargs)


def documented_router(tag: str, **kwargs: Any) -> APIRouter:
    """An :class:`APIRouter` for one resource (its OpenAPI tag), with docstring descriptions."""
    return APIRouter(tags=[tag], route_class=DocumentedRoute, **kwargs)
