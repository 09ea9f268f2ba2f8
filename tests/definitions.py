"""Reading a pipeline definition JSON in tests (no SDK needed)."""

from __future__ import annotations


def steps_by_name(doc: dict) -> dict[str, dict]:
    """Every step, branches included."""
    found = {}

    def walk(steps):
        for step in steps:
            found[step["Name"]] = step
            if step["Type"] == "Condition":
                walk(step["Arguments"]["IfSteps"])
                walk(step["Arguments"]["ElseSteps"])

    walk(doc["Steps"])
    return found
