"""The requests the pipeline makes, checked against SageMaker's own API model (botocore's service shapes).

botocore validates types, required members and minimums only; SageMaker rejects the rest (enums, maximum
lengths, patterns such as CustomerMetadataProperties') when the job starts, after the pipeline was deployed and
often after training was paid for. ``problems(operation, request)`` checks a request against every constraint of
the operation's input shape; ``definition_problems(definition)`` checks each step of a pipeline definition as
the request SageMaker makes from it. Pipeline expressions (``{"Get": …}``, ``{"Std:Join": …}``) are resolved at
run time and are skipped; parameters' defaults are checked where they are used.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

# the pipeline step types that become one SageMaker request, and the member SageMaker generates for them
STEP_REQUESTS = {
    "Training": ("CreateTrainingJob", {"TrainingJobName"}),
    "Processing": ("CreateProcessingJob", {"ProcessingJobName"}),
    "RegisterModel": ("CreateModelPackage", set()),
}
_EXPRESSIONS = ("Get", "Std:Join", "Std:JsonGet", "Std:Select")


@cache
def _model(service: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@cache
def _compiled(pattern: str):
    import regex  # the API's patterns use Unicode classes (\p{L}) that the standard re lacks

    # Smithy-generated patterns sometimes carry a length after the anchor ("…)${1,256}"): the length is checked
    # separately by min/max
    if pattern.endswith("}") and "${" in pattern:
        pattern = pattern[: pattern.rindex("${") + 1]
    return regex.compile(pattern)


def _expression(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _EXPRESSIONS


def _length(value: Any, meta: dict, path: str, what: str, out: list[str]) -> None:
    if "min" in meta and len(value) < meta["min"]:
        out.append(f"{path}: {what} {len(value)} is below the minimum {meta['min']}")
    if "max" in meta and len(value) > meta["max"]:
        out.append(f"{path}: {what} {len(value)} is above the maximum {meta['max']}")


def _check(shape, value: Any, path: str, out: list[str], generated: set[str] = frozenset()) -> None:
    if _expression(value):
        return
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure":
        if not isinstance(value, dict):
            out.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        for name in shape.required_members:
            if name not in value and name not in generated:
                out.append(f"{path}.{name}: required")
        for name, member in value.items():
            if name not in shape.members:
                out.append(f"{path}.{name}: not a member of {shape.name}")
            else:
                _check(shape.members[name], member, f"{path}.{name}", out)
    elif kind == "list":
        if not isinstance(value, list):
            out.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        _length(value, meta, path, "length", out)
        for i, item in enumerate(value):
            _check(shape.member, item, f"{path}[{i}]", out)
    elif kind == "map":
        if not isinstance(value, dict):
            out.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        _length(value, meta, path, "entries", out)
        for key, item in value.items():
            _check(shape.key, key, f"{path} key {key!r}", out)
            _check(shape.value, item, f"{path}[{key!r}]", out)
    elif kind == "string":
        if not isinstance(value, str):
            out.append(f"{path}: expected a string, got {type(value).__name__}")
            return
        if shape.enum and value not in shape.enum:
            out.append(f"{path}: {value!r} is not one of the allowed values ({', '.join(shape.enum[:12])}…)")
        _length(value, meta, path, "length", out)
        pattern = meta.get("pattern")
        if pattern and not _compiled(pattern).fullmatch(value):
            out.append(f"{path}: {value!r} does not match the API pattern {pattern}")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(f"{path}: expected an integer, got {value!r}")
        elif ("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"]):
            out.append(f"{path}: {value} is outside [{meta.get('min', '-∞')}, {meta.get('max', '∞')}]")
    elif kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(f"{path}: expected a number, got {value!r}")
    elif kind == "boolean" and not isinstance(value, bool):
        out.append(f"{path}: expected true or false, got {value!r}")


def problems(operation: str, request: dict[str, Any], *, generated=(), service: str = "sagemaker") -> list[str]:
    """Every way ``request`` breaks the input shape of ``service.operation`` (empty: SageMaker accepts it)."""
    out: list[str] = []
    _check(_model(service).operation_model(operation).input_shape, request, operation, out, set(generated))
    return out


def _steps(steps: list[dict]):
    for step in steps:
        yield step
        arguments = step.get("Arguments", {})
        if step.get("Type") == "Condition":
            yield from _steps(arguments.get("IfSteps", []) + arguments.get("ElseSteps", []))


def definition_problems(definition: str | dict[str, Any]) -> list[str]:
    """Each step of a pipeline definition as the request SageMaker makes from it, against the API model."""
    doc = json.loads(definition) if isinstance(definition, str) else definition
    out: list[str] = []
    for step in _steps(doc.get("Steps", [])):
        operation, generated = STEP_REQUESTS.get(step.get("Type"), (None, ()))
        if operation:
            found = problems(operation, step.get("Arguments", {}), generated=generated)
            out += [f"step {step['Name']}: {p}" for p in found]
    return out
