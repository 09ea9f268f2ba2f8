"""The definition's expressions, evaluated as SageMaker does: parameters, ``Get`` (parameters, the execution id,
step properties), ``Std:Join``, ``Std:JsonGet`` over property files, and the conditions of a ConditionStep."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from meter.booleans import parse_bool
from meter.errors import MeterError

if TYPE_CHECKING:
    from pipelines.local.runner import StepState

_BOOLEAN = partial(parse_bool, strict=True)  # SageMaker's Boolean parameter: true or false, in any case


class StepError(MeterError):
    """A step could not run or its output is not what the definition says."""


class Resolver:
    def __init__(self, parameters: dict[str, Any], execution_id: str, states: dict[str, StepState]):
        self.parameters, self.execution_id, self.states = parameters, execution_id, states

    def __call__(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            return [self(v, where) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Get"}:
            return self.get(value["Get"], where)
        if set(value) == {"Std:Join"}:
            join = value["Std:Join"]
            return str(join["On"]).join(as_text(self(v, where)) for v in join["Values"])
        if set(value) == {"Std:JsonGet"}:
            spec = value["Std:JsonGet"]
            ref = spec["PropertyFile"]["Get"]
            step, _, rest = ref.removeprefix("Steps.").partition(".PropertyFiles.")
            doc = self._state(step, where).property_files.get(rest)
            if doc is None:
                raise StepError(f"step {where}: step {step} has no property file {rest}")
            return _json_path(doc, spec["Path"], f"step {where}: {rest}")
        return {k: self(v, where) for k, v in value.items()}

    def get(self, ref: str, where: str) -> Any:
        if ref.startswith("Parameters."):
            name = ref.split(".", 1)[1]
            if name not in self.parameters:
                raise StepError(f"step {where}: parameter {name} is not defined")
            return self.parameters[name]
        if ref == "Execution.PipelineExecutionId":
            return self.execution_id
        if ref.startswith("Execution."):
            raise StepError(f"step {where}: execution variable {ref} is not supported locally")
        if ref.startswith("Steps."):
            step, _, prop = ref.removeprefix("Steps.").partition(".")
            state = self._state(step, where)
            if prop not in state.properties:
                raise StepError(f"step {where}: property {prop} of step {step} is not available")
            return state.properties[prop]
        raise StepError(f"step {where}: unsupported reference {ref}")

    def _state(self, step: str, where: str) -> StepState:
        state = self.states.get(step)
        if state is None:
            raise StepError(f"step {where}: refers to unknown step {step}")
        if state.status != "Succeeded":
            raise StepError(f"step {where}: step {step} has not succeeded ({state.status})")
        return state


def as_text(value: Any) -> str:
    """A value as SageMaker renders it in a string (Join, hyperparameters, metadata): booleans in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_path(doc: Any, path: str, what: str) -> Any:
    value = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        try:
            value = value[int(part[1:-1])] if part.startswith("[") else value[part]
        except (KeyError, IndexError, TypeError):
            raise StepError(f"{what} has no value at {path}") from None
    return value


def references(value: Any) -> set[str]:
    """Names of the steps an expression reads from."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Get" and isinstance(v, str) and v.startswith("Steps."):
                found.add(v.removeprefix("Steps.").split(".", 1)[0])
            else:
                found |= references(v)
    elif isinstance(value, list):
        for v in value:
            found |= references(v)
    return found


def evaluate_condition(condition: dict[str, Any], resolve: Callable[[Any], Any]) -> bool:
    kind = condition["Type"]
    if kind == "Not":
        return not evaluate_condition(condition["Condition"], resolve)
    if kind == "Or":
        return any(evaluate_condition(c, resolve) for c in condition["Conditions"])
    if kind == "In":
        return resolve(condition["QueryValue"]) in [resolve(v) for v in condition["Values"]]
    left, right = resolve(condition["LeftValue"]), resolve(condition["RightValue"])
    compare = {
        "Equals": lambda a, b: a == b,
        "GreaterThan": lambda a, b: a > b,
        "GreaterThanOrEqualTo": lambda a, b: a >= b,
        "LessThan": lambda a, b: a < b,
        "LessThanOrEqualTo": lambda a, b: a <= b,
    }
    if kind not in compare:
        raise MeterError(f"condition type {kind} is not supported locally")
    return compare[kind](left, right)


def resolve_parameters(definition: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """The execution's parameter values: the declared defaults with ``overrides``, typed and checked."""
    declared = {p["Name"]: p for p in definition.get("Parameters") or []}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise MeterError(f"unknown parameter(s) {', '.join(unknown)}: the pipeline has {', '.join(declared)}")
    values = {}
    for name, p in declared.items():
        raw = overrides.get(name, p.get("DefaultValue"))
        if raw is None:
            raise MeterError(f"parameter {name} has no default: give --param {name}=VALUE")
        try:
            values[name] = {"Integer": int, "Float": float, "Boolean": _BOOLEAN}.get(p["Type"], str)(raw)
        except ValueError:
            raise MeterError(f"parameter {name}={raw!r} is not a valid {p['Type']}") from None
        if p.get("EnumValues") and str(raw) not in p["EnumValues"]:
            raise MeterError(f"parameter {name}={raw!r}: use one of {', '.join(p['EnumValues'])}")
    return values
