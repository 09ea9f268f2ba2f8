"""Run a pipeline definition on one machine: the very JSON `flops-meter pipeline definition` produces.

Processing and Training steps run as subprocesses of their own entrypoints with ``/opt/ml`` remapped under the run
directory (``OPT_ML``); S3 URIs map to a local object directory; PropertyFiles, ``JsonGet``, ``Join``, conditions,
ConditionStep branches and FailStep messages are evaluated as SageMaker does; RegisterModel writes a local model
registry (SQLite). A step type it does not know is an error naming the step.

Modules, each importing only those above it::

    objects       LocalObjects: S3 on disk
    registry      LocalRegistry: model packages in SQLite
    expressions   Resolver (Get, Join, JsonGet), conditions, parameter values
    scheduler     plan(): the steps, their branches and their order (graphlib)
    runner        LocalRunner, StepState, Execution: the run, steps as subprocesses
    governed      local_store_uri, stage_governed, run_governed, load_execution: the governed pipeline here

``governed`` is not imported here: it imports ``pipelines.governed``, which reaches ``registry`` through
``pipelines.registries``; import it as ``pipelines.local.governed``.

Layout of the local home (default ``./flops-meter-local``)::

    objects/<bucket>/<key>     what s3://bucket/key holds
    audit/                     the audit store (file://), shared by runs: lineages add up
    registry.db                model packages, approval status, customer metadata
    runs/<execution-id>/       definition.json, parameters.json, execution.json, steps/<Name>/{log.txt,opt_ml/}
"""

from pipelines.local.expressions import StepError
from pipelines.local.objects import LocalObjects
from pipelines.local.registry import LocalRegistry
from pipelines.local.runner import Execution, LocalRunner, StepState

__all__ = ["Execution", "LocalObjects", "LocalRegistry", "LocalRunner", "StepError", "StepState"]
