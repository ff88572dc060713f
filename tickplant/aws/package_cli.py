"""``tickplant aws package``: the Lambda functions' archives (or image) and CloudFormation.

``add_commands(sub, common)`` registers it on the CLI's subparsers (beside tickplant/aws/cli.py's).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tickplant.textable import format_table


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def cmd_aws_package(args: argparse.Namespace) -> int:
    from tickplant.aws.package import UNZIPPED_LIMIT, build

    package = build(Path(args.out))
    biggest = package.dependencies[:5]
    print(format_table(["dependency", "version", "installed"],
                       [[d.name, d.version, _mb(d.size)] for d in biggest]))
    total = package.code_size + package.dependencies_size
    verdict = ("within" if package.form == "zip+layer" else "past")
    print(f"\ncode {_mb(package.code_size)} + dependencies {_mb(package.dependencies_size)} "
          f"({len(package.dependencies)} distributions) = {_mb(total)} unzipped: {verdict} Lambda's "
          f"{UNZIPPED_LIMIT // 1_000_000} MB for a function and its layers")
    if package.form == "image":
        print("-> a container image (10 GB limit): docker build -f image/Dockerfile, push to ECR, "
              "deploy lambda.yaml with ImageUri")
    else:
        print("-> function.zip and layer.zip: upload both to S3, deploy lambda.yaml with CodeBucket")
    print(format_table(["built", "size"], [[str(p), _mb(p.stat().st_size)] for p in package.artifacts]))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``aws package`` on the CLI's subparsers."""
    aws = sub.add_parser("aws", parents=[common], help="AWS Lambda: package the handlers")
    actions = aws.add_subparsers(dest="aws", required=True, metavar="ACTION")
    package = actions.add_parser("package", parents=[common],
                                 help="the functions' zip (and layer, or container image) and CloudFormation")
    package.add_argument("--out", default="dist/lambda", help="where to write them (default dist/lambda)")
    package.set_defaults(func=cmd_aws_package)
