"""SageMaker Pipelines steps (EstimateFLOPs, TrainWithMeter, ClassifyCompliance, PublishAudit): factories and
container entrypoints. Imports sagemaker lazily; see DESIGN.md."""
