"""The plant on AWS: CloudWatch figures of the RDB nodes and the scaler of their Auto Scaling group.

Only the instance-id lookup (``instance``) is imported by the workers themselves; the
rest is the top of the plant (CLI commands), reading the metadata topic and calling AWS.
"""
