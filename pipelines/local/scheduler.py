"""The order of a run: every step of a definition, the ConditionStep branch that holds it, and what it waits for.

The order is topological (``graphlib``), taken in rounds: every step whose dependencies are done, by name, then
the next round. Unknown step types, unknown dependencies, a name used twice and a cycle are errors naming steps.
"""

from __future__ import annotations

import contextlib
import graphlib
from dataclasses import dataclass
from typing import Any

from meter.errors import MeterError
from pipelines.local.expressions import references

SUPPORTED = ("Processing", "Training", "Condition", "Fail", "RegisterModel")


@dataclass
class Node:
    step: dict[str, Any]
    guard: tuple[str, str] | None  # (condition step, "if"/"else") whose branch holds it
    needs: set[str]


def plan(definition: dict[str, Any]) -> dict[str, Node]:
    """Every step with its branch and what it waits for, in the order to run them."""
    nodes: dict[str, Node] = {}

    def add(steps: list[dict[str, Any]], guard: tuple[str, str] | None) -> None:
        for step in steps:
            name, kind = step.get("Name"), step.get("Type")
            if kind not in SUPPORTED:
                raise MeterError(
                    f"step {name}: type {kind} is not supported by the local runner ({', '.join(SUPPORTED)})"
                )
            if name in nodes:
                raise MeterError(f"step {name} appears twice in the definition")
            own = step.get("Arguments") or {}
            if kind == "Condition":  # its branches are steps of their own, not inputs of the condition
                own = own.get("Conditions")
            needs = references(own) | references(step.get("PropertyFiles"))
            needs |= {d if isinstance(d, str) else d.get("Step") for d in step.get("DependsOn") or []}
            if guard:
                needs.add(guard[0])
            nodes[name] = Node(step, guard, needs)
            if kind == "Condition":
                add(step["Arguments"].get("IfSteps") or [], (name, "if"))
                add(step["Arguments"].get("ElseSteps") or [], (name, "else"))

    add(definition.get("Steps") or [], None)
    for name, node in nodes.items():
        unknown = node.needs - set(nodes)
        if unknown:
            raise MeterError(f"step {name}: depends on unknown step(s) {', '.join(sorted(unknown))}")
    return {n: nodes[n] for n in _order({name: node.needs for name, node in nodes.items()})}


def _order(needs: dict[str, set[str]]) -> list[str]:
    """Rounds of the steps whose dependencies are done, each round by name: the same definition, the same order."""
    sorter = graphlib.TopologicalSorter(needs)
    with contextlib.suppress(graphlib.CycleError):  # it still gives every step before a cycle: the rest are named
        sorter.prepare()
    order: list[str] = []
    while sorter.is_active():  # false once no step can be given: all are done, or the rest wait on a cycle
        ready = sorted(sorter.get_ready())
        order += ready
        sorter.done(*ready)
    if len(order) < len(needs):
        remaining = sorted(set(needs) - set(order))
        raise MeterError(f"the definition has a dependency cycle among steps {', '.join(remaining)}")
    return order
