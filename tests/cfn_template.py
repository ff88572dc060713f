"""deploy/cloudformation/tickplant.yaml read as CloudFormation would, for tests/test_deploy.py.

The template is decoded by cfn-lint's own decoder (it knows !Ref, !Sub, !GetAtt...), then
its intrinsic functions are resolved the way a stack created with the parameters' defaults
would resolve them, so that the user data and cfn-init files become the text an instance
runs. What only exists in a real stack (a resource's id, an attribute, the MSK brokers) is
given a plausible stand-in; parameters without a default get SAMPLE_PARAMETERS.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode.decode import decode_str

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "cloudformation" / "tickplant.yaml"

PSEUDO = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
          "AWS::StackName": "tickplant-test", "AWS::URLSuffix": "amazonaws.com",
          "AWS::StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/tickplant-test/0f0e"}
SAMPLE_PARAMETERS = {"VpcId": "vpc-0123456789abcdef0", "SubnetA": "subnet-0a", "SubnetB": "subnet-0b",
                     "GatewayUsersS3Uri": "s3://plant-config/users.toml"}
NO_VALUE = object()  # AWS::NoValue: the property or list item is left out
SERVICE = "tickplant-service"  # installed by cfn-init: `tickplant-service ROLE [K=V ...] -- ARGS`


class TemplateError(ValueError):
    """The template cannot be read or resolved; the message says where."""


def load(text: str | None = None) -> dict[str, Any]:
    template, matches = decode_str(TEMPLATE.read_text() if text is None else text)
    if matches:
        raise TemplateError("; ".join(str(m) for m in matches))
    return template


@dataclass
class Resolver:
    """Intrinsic functions evaluated with the parameters' defaults."""

    template: dict[str, Any]
    parameters: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = {}
        for name, spec in self.template.get("Parameters", {}).items():
            if "Default" in spec:
                self.parameters[name] = str(spec["Default"])
            elif name in SAMPLE_PARAMETERS:
                self.parameters[name] = SAMPLE_PARAMETERS[name]
            else:
                raise TemplateError(f"parameter {name} has no default and no sample value in tests/cfn_template.py")

    def ref(self, name: str) -> str:
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.parameters:
            value = self.parameters[name]
            if value.startswith("/aws/service/"):  # an SSM parameter type: the AMI id it holds
                return "ami-0123456789abcdef0"
            return value
        if name in self.template["Resources"]:
            if name == "MskCluster":  # Ref of an MSK cluster is its ARN, which the policies split
                return "arn:aws:kafka:eu-west-1:123456789012:cluster/tickplant/5f0e-11aa-22bb-1"
            return f"{name.lower()}-ref"
        raise TemplateError(f"!Ref {name}: no such parameter or resource")

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template["Conditions"][name]))

    def sub(self, text: str, variables: dict[str, Any]) -> str:
        def one(m: re.Match[str]) -> str:
            inner = m.group(1)
            if inner.startswith("!"):
                return "${" + inner[1:] + "}"
            if inner in variables:
                return str(variables[inner])
            if "." in inner and inner.split(".", 1)[0] in self.template["Resources"]:
                resource, attribute = inner.split(".", 1)
                return self.get_att(resource, attribute)
            return self.ref(inner)

        return re.sub(r"\$\{([^}]*)\}", one, text)

    def get_att(self, resource: str, attribute: str) -> str:
        if resource not in self.template["Resources"]:
            raise TemplateError(f"!GetAtt {resource}.{attribute}: no such resource")
        return f"{resource.lower()}-{attribute.lower()}"

    def value(self, node: Any) -> Any:
        """``node`` with every intrinsic function replaced by what it gives."""
        if isinstance(node, list):
            out = [self.value(v) for v in node]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.value(arg[1]))
                return self.sub(text, variables)
            if key == "Fn::GetAtt":
                resource, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(resource, attribute)
            if key == "Fn::FindInMap":
                name, top, second = (self.value(a) for a in arg)
                return self.template["Mappings"][name][top][second]
            if key == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self.condition(name) else no)
            if key == "Fn::Equals":
                a, b = (self.value(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::And":
                return all(self.value(x) for x in arg)
            if key == "Fn::Or":
                return any(self.value(x) for x in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Base64":
                return self.value(arg)  # the script itself is what the tests read
            if key == "Fn::Select":
                index, items = self.value(arg[0]), self.value(arg[1])
                return items[int(index)]
            if key == "Fn::Split":
                sep, text = self.value(arg[0]), self.value(arg[1])
                return str(text).split(sep)
            if key == "Fn::Join":
                sep, items = self.value(arg[0]), self.value(arg[1])
                return sep.join(str(i) for i in items)
            if key.startswith("Fn::"):
                raise TemplateError(f"{key} is not resolved by tests/cfn_template.py")
        out = {k: self.value(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}


@dataclass(frozen=True)
class Unit:
    """One `tickplant-service ROLE [K=V ...] -- ARGS` line of some user data."""

    where: str  # the launch template
    role: str
    env: dict[str, str]
    argv: list[str]  # what follows `tickplant`


def script_lines(script: str) -> list[str]:
    """A shell script's logical lines (backslash continuations joined)."""
    return script.replace("\\\n", " ").splitlines()


def units(where: str, script: str) -> list[Unit]:
    out = []
    for line in script_lines(script):
        words = shlex.split(line, comments=True)
        if not words or not words[0].endswith(SERVICE):
            continue
        if "--" not in words:
            raise TemplateError(f"{where}: {SERVICE} without '--': {line.strip()}")
        cut = words.index("--")
        role, assignments, argv = words[1], words[2:cut], words[cut + 1:]
        env = dict(a.split("=", 1) for a in assignments)
        out.append(Unit(where, role, env, argv))
    return out


def heredoc(script: str, target: str) -> str:
    """The body of `cat > TARGET <<EOF ... EOF` in a script."""
    m = re.search(rf"cat > {re.escape(target)} <<'?EOF'?\n(.*?)\nEOF\n", script, re.S)
    if not m:
        raise TemplateError(f"no heredoc writing {target}")
    return m.group(1)


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
