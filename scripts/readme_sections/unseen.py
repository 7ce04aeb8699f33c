"""The unseen-source table: each recipe or shipped model on faces from sources it never saw."""

from __future__ import annotations

from typing import Any

#: Display order of classes in the recall table (6-class fold).
CLASSES = ("angry", "fearful", "happy", "neutral", "sad", "surprised")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _label(name: str, row: dict[str, Any]) -> str:
    label = (f"`{name.removeprefix('shipped:')}`, file" if name.startswith("shipped:")
             else f"recipe `{name}`")
    return f"{label}: {row['about']}" if row.get("about") else label


def render_unseen(report: dict[str, Any]) -> str:
    """Balanced accuracy per unseen set (6 classes), the mean, then recall per class."""
    table = report["table"]
    sets: list[str] = []
    for row in table.values():
        sets += [s for s in row["sets"] if s not in sets]
    sizes = {s: next(row["sets"][s]["n"] for row in table.values() if s in row["sets"])
             for s in sets}
    order = sorted(table, key=lambda r: -(table[r]["mean_balanced_accuracy"] or 0))
    lines = ["| model | " + " | ".join(f"{s} ({sizes[s]})" for s in sets) + " | **mean** |",
             "|---|" + "---:|" * (len(sets) + 1)]
    for name in order:
        row = table[name]
        cells = [_pct(row["sets"].get(s, {}).get("balanced_accuracy")) for s in sets]
        lines.append(f"| {_label(name, table[name])} | " + " | ".join(cells)
                     + f" | **{_pct(row['mean_balanced_accuracy'])}** |")
    lines += ["", "Recall per class, averaged over the sets that have the class:", "",
              "| model | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for name in order:
        recall = table[name]["mean_recall"]
        lines.append(f"| {_label(name, table[name])} | "
                     + " | ".join(_pct(recall.get(c)) for c in CLASSES) + " |")
    hardware = "; ".join(report.get("hardware", [])) or "hardware not recorded"
    lines += ["", "Balanced accuracy with disgust folded into angry, through the service's own "
              "path (face found, eyes levelled, cropped; no face found counts as wrong); a "
              "held-out source is scored by the run that left it out. Scored on "
              f"{hardware}. _Generated from `reports/unseen.json` "
              "(`scripts/unseen.py`)._"]
    return "\n".join(lines)
