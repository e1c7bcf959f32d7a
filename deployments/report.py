"""How an incident reads on a terminal: shared by `runbooks incidents ID` and the demo."""

from __future__ import annotations


def format_incident(view: dict) -> str:
    lines = [
        f"incident {view['id']}: {view['title']}",
        f"model {view['model']}  status {view['status']}  severity {view['severity']}  "
        f"strategy {view['strategy']}",
        "timeline:",
    ]
    for e in view.get("timeline", []):
        lines.append(f"  {e['at'][11:23]}  {e['actor']:<14} {e['message']}")
    return "\n".join(lines)
