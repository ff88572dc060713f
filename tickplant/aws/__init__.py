"""The plant on AWS: CloudWatch figures of the RDB nodes and the scaler of their Auto Scaling group.

The top of the plant (CLI commands beside supervision), reading the metadata topic and
calling AWS; the workers' own lookup of their instance id is a foundation (tickplant/ec2.py).
"""
