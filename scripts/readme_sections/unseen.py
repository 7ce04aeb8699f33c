"""The unseen-source table, compact: the rows that stand for what would ship
(:func:`emorec.unseen.markdown_table`; the card has every row)."""

from __future__ import annotations

from typing import Any

from emorec.unseen import markdown_table


def render_unseen(report: dict[str, Any]) -> str:
    return markdown_table(report, compact=True)


__all__ = ["render_unseen"]
