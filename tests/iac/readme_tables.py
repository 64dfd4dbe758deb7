#!/usr/bin/env python3
"""Inputs/outputs tables of a Terraform module README, generated from its variables.tf and
outputs.tf. The README keeps them between <!-- BEGIN_TF_TABLES --> and <!-- END_TF_TABLES -->;
test_terraform.py fails when they are stale.

    python3 tests/iac/readme_tables.py terraform/modules/aws           # print the tables
    python3 tests/iac/readme_tables.py --write terraform/modules/aws   # update README.md
"""

from __future__ import annotations

import argparse
import os
import re
import sys

BEGIN, END = "<!-- BEGIN_TF_TABLES -->", "<!-- END_TF_TABLES -->"


def _blocks(text: str, kind: str):
    for m in re.finditer(rf'(?m)^{kind} "([^"]+)" \{{\n(.*?)^\}}', text, re.S):
        yield m.group(1), m.group(2)


def _attr(body: str, name: str):
    m = re.search(rf'(?m)^  {name}\s*=\s*(.+)$', body)
    return m.group(1).strip() if m else None


def _desc(body: str) -> str:
    raw = _attr(body, "description") or '""'
    return raw[1:-1].replace('\\"', '"').replace("|", "\\|")


def tables(module_dir: str) -> str:
    with open(os.path.join(module_dir, "variables.tf"), encoding="utf-8") as f:
        variables = f.read()
    with open(os.path.join(module_dir, "outputs.tf"), encoding="utf-8") as f:
        outputs = f.read()
    lines = ["## Inputs", "", "| Name | Description | Type | Default | Required |", "|---|---|---|---|:---:|"]
    for name, body in sorted(_blocks(variables, "variable"), key=lambda nb: (_attr(nb[1], "default") is not None, nb[0])):
        default = _attr(body, "default")
        shown = f"`{default}`" if default is not None else "n/a"
        lines.append(f"| `{name}` | {_desc(body)} | `{_attr(body, 'type')}` | {shown} | {'no' if default is not None else 'yes'} |")
    lines += ["", "## Outputs", "", "| Name | Description |", "|---|---|"]
    for name, body in _blocks(outputs, "output"):
        lines.append(f"| `{name}` | {_desc(body)} |")
    return "\n".join(lines) + "\n"


def section(readme: str) -> str:
    m = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), readme, re.S)
    return m.group(1) if m else ""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--write", action="store_true", help="rewrite the README section in place")
    p.add_argument("module_dir")
    a = p.parse_args()
    t = tables(a.module_dir)
    if not a.write:
        sys.stdout.write(t)
        return 0
    path = os.path.join(a.module_dir, "README.md")
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    if BEGIN not in readme or END not in readme:
        print(f"{path}: add {BEGIN} and {END} where the tables go", file=sys.stderr)
        return 2
    new = re.sub(re.escape(BEGIN) + r"\n.*?" + re.escape(END), lambda _: f"{BEGIN}\n{t}{END}", readme, flags=re.S)
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
