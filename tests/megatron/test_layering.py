"""The Megatron adapters (megatron_flops.megatron and the runner alias) never import the
command line: commands sit on top of every other layer."""

import ast
import os

import megatron_flops

PACKAGE = os.path.dirname(os.path.abspath(megatron_flops.__file__))
COMMAND_LINE = ("megatron_flops.commands", "megatron_flops.cli")


def imported_modules(path: str, package: str):
    """Absolute names of the modules a file imports (relative imports resolved)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            yield prefix
            for alias in node.names:
                yield f"{prefix}.{alias.name}"


def adapter_files():
    yield os.path.join(PACKAGE, "run.py"), "megatron_flops"
    for folder, _, files in os.walk(os.path.join(PACKAGE, "megatron")):
        package = "megatron_flops." + os.path.relpath(folder, PACKAGE).replace(os.sep, ".")
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name), package


def test_megatron_adapters_never_import_the_command_line():
    found = {}
    for path, package in adapter_files():
        bad = sorted({m for m in imported_modules(path, package)
                      if any(m == c or m.startswith(c + ".") for c in COMMAND_LINE)})
        if bad:
            found[os.path.relpath(path, PACKAGE)] = bad
    assert found == {}


def test_the_resolver_sees_a_relative_import_of_the_command_line(tmp_path):
    """The check itself can fail: `from ..commands.common import X` inside megatron/."""
    path = tmp_path / "patch.py"
    path.write_text("from ..commands.common import UsageError\n")
    assert "megatron_flops.commands.common" in set(imported_modules(str(path), "megatron_flops.megatron"))
