"""The moto-backed AWS account of the integration tests: its bucket, region and keys (fixtures in conftest)."""

AWS_BUCKET = "qe-airflow-conn"
AWS_REGION = "eu-west-1"  # only the connection says so: the settings' region stays us-east-1
AWS_KEYS = {"aws_access_key_id": "AKIDFROMCONNECTION", "aws_secret_access_key": "secret-from-connection"}
