"""The CDK app and constructs that provision the governed pipeline (cdk.json: python3 infra/app.py)."""
