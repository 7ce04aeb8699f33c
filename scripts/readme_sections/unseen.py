"""The unseen-source table (rendered by :func:`emorec.unseen.markdown_table`)."""

from __future__ import annotations

from emorec.unseen import markdown_table as render_unseen

__all__ = ["render_unseen"]
