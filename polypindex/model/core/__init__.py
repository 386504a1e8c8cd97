"""Shared utilities: errors, atomic files, the artefact layout, encoder version strings."""
