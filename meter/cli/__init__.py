"""The ``flops-meter`` command line.

``flops-meter estimate``  plan a fine-tuning run: exact FLOPs from the model config and the data size, compared
                          across methods and against the one-third threshold.
``flops-meter models``    the bundled model configs and the published pretraining compute.
``flops-meter classify``  hold a run record against the one-third rule, with the lineage's earlier runs.
``flops-meter audit``     publish / verify / show tamper-evident records (file://DIR or s3://BUCKET/PREFIX?table=T).
``flops-meter report``    a Markdown or HTML report of one record, with a plot of compute against the threshold.

Exit status: 0 success, 1 a crossed threshold (classify --fail-on-cross) or a broken chain (audit verify),
2 bad input (one line on stderr naming the input, no traceback), 3 an internal error (one line; FLOPS_METER_DEBUG=1
shows the traceback), 130 interrupted.

The package: parser.py (the parser and its value checks), estimate.py (estimate, models), records.py (classify,
audit, report); here, main and the registration of other packages' command groups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

from meter.cli import estimate, records
from meter.cli.parser import build_parser
from meter.errors import MeterError

# the extra that installs a missing library (pyproject.toml), for the one-line hint instead of an ImportError
EXTRAS = {
    "transformers": "hf",
    "peft": "hf",
    "accelerate": "hf",
    "pynvml": "gpu",
    "matplotlib": "report",
    "sagemaker": "pipeline",
    "boto3": "pipeline",
    "botocore": "pipeline",
    "aws_cdk": "infra",
    "constructs": "infra",
    "cdk_nag": "infra",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 success; 1 a crossed threshold or a broken audit store; 2 bad input; 3 an internal error;
    130 interrupted. Every failure is one line on stderr; FLOPS_METER_DEBUG=1 shows the traceback of the last two."""
    debug = os.environ.get("FLOPS_METER_DEBUG") == "1"
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        if debug:
            raise
        print("flops-meter: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: a bug, never a traceback at the user
        if debug:
            raise
        print(f"flops-meter: internal error: {type(e).__name__}: {_one_line(e) or '(no message)'} (please report it; "
              "FLOPS_METER_DEBUG=1 shows the traceback)", file=sys.stderr)  # fmt: skip
        return 3


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        _check_utf8(argv, parser)
        args = parser.parse_args(argv)
        return _run(args)
    except MeterError as e:
        print(f"flops-meter: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        extra = EXTRAS.get(top)
        if extra is None:
            raise
        if argv[:2] == ["pipeline", "demo"]:
            extra = "demo"  # the demo needs two extras: name the one that has both
        print(f"flops-meter: error: this command needs {top}, which is not installed: "
              f"pip install 'flops-meter[{extra}]'", file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # `flops-meter … | head`: the reader left; nothing more to say
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.filename is None:
            raise
        from meter.jsonfile import os_problem

        print(f"flops-meter: error: {_one_line(os_problem(e, e.filename, 'file', 'use'))}", file=sys.stderr)
        return 2


def _check_utf8(argv: list[str], parser: argparse.ArgumentParser) -> None:
    """Arguments are UTF-8 text: bytes that are not (a Latin-1 terminal, a script in another encoding) reach
    Python as lone surrogates that would fail later, deep in a JSON writer or a hash. Named here instead."""
    takes_value = _value_options(parser)
    for index, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            value = arg
            if arg.startswith("--") and "=" in arg:
                name, _, value = arg.partition("=")
            elif index and argv[index - 1] in takes_value:
                name = argv[index - 1]
            else:
                name = f"argument {index + 1}"
            shown = value.encode("utf-8", "surrogateescape" if _escaped(value) else "backslashreplace")
            raise MeterError(
                f"{name} {shown!r} is not valid UTF-8: give UTF-8 text (check the terminal's encoding)"
            ) from None


def _escaped(arg: str) -> bool:
    try:
        arg.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of every (sub)command that take a value."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _value_options(sub)
        elif action.nargs != 0:
            found.update(action.option_strings)
    return found


def _run(args: argparse.Namespace) -> int:
    if args.command == "estimate":
        p = estimate.plan(args)
        if args.json:
            print(json.dumps(p.to_dict(), indent=2))
        else:
            estimate.print_plan(p)
    elif args.command == "models":
        estimate.list_models(args.json)
    elif args.command == "classify":
        return records.cmd_classify(args)
    elif args.command == "audit":
        return records.cmd_audit(args)
    elif args.command == "report":
        return records.cmd_report(args)
    elif getattr(args, "handler", None) is not None:  # a registered command group
        return args.handler(args)
    return 0
