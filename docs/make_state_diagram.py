#!/usr/bin/env python3
"""Generate the state diagram and transition table in docs/core.md from the code.

    python docs/make_state_diagram.py          # rewrite docs/core.md in place
    python docs/make_state_diagram.py --check  # exit 1 if docs/core.md is stale

Everything between the BEGIN/END markers in docs/core.md is produced from
``nonstop.core.TRANSITIONS`` (as h11's make-state-diagrams.py does), so the
picture can never drift from the table the core actually uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nonstop.core import TRANSITIONS, State

DOC = Path(__file__).resolve().parent / "core.md"
BEGIN = "<!-- BEGIN GENERATED: make_state_diagram.py -->"
END = "<!-- END GENERATED -->"


def render() -> str:
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> IDLE"]
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"    {source.name} --> {target.name}: {event.value}")
    lines.append(f"    {State.STOPPED.name} --> [*]")
    lines.append("```")
    lines.append("")
    lines.append("| from | input | to |")
    lines.append("|---|---|---|")
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"| `{source.name}` | `{event.value}` | `{target.name}` |")
    return "\n".join(lines)


def updated(text: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise SystemExit(f"{DOC}: marker {BEGIN!r} not found")
    _, sep, tail = rest.partition(END)
    if not sep:
        raise SystemExit(f"{DOC}: marker {END!r} not found")
    return f"{head}{BEGIN}\n{render()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    new = updated(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC} is stale: run python docs/make_state_diagram.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
