"""The meter's log: metric lines on stdout whatever the root logger does, and the one line said at the end."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("flops_meter")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (test runners and notebooks replace it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def ensure_log_handler() -> None:
    """Metric lines must reach stdout for SageMaker's metric_definitions, whatever the root logger does."""
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def say_where(record: dict[str, Any], output_path: Path) -> None:
    """One line at the end: the count, this run against the threshold, and where the record is."""
    threshold = record["threshold"]
    crossed = "CROSSES" if threshold["crossed_by_this_run"] else "below"
    log.info(
        "flops_meter: %s: %.1e regulatory FLOP (%s), %.1f%% of the threshold %.1e: this run alone is %s it "
        "(the lineage's total decides: flops-meter classify %s); record %s",
        record["status"], record["flops"]["regulatory"], record["flops"]["confidence"],
        100 * threshold["fraction"], threshold["flops"], crossed, output_path, output_path,
    )  # fmt: skip
