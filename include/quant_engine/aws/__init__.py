"""boto3 / SageMaker adapters, kept in one place so the rest of the library stays cloud-neutral."""
