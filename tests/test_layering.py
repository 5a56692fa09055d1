"""Import layering, read from the source (every import statement, function-level ones too).

- core: the top-level modules of ``megatron_flops`` (shapes, flops, params, hardware, meter,
  legacy, planning, report, sinks, ``__init__``) import only the standard library and one
  another — never an adapter package, never the command line.  ``cli.py`` and
  ``__main__.py`` are entry points and ``run.py`` an alias of the Megatron runner: not core.
- adapters: every sub-package except ``commands/`` (megatron/, reference/, logs/, demo/,
  profile/, and any new one) may import the core and one another, never
  ``megatron_flops.commands`` or ``megatron_flops.cli`` (``demo/__main__.py``, an entry point,
  excepted).
- no import circles: no module of the package reaches itself again through the imports of
  the package's own modules (module-level and function-level ones alike: a function-level
  import only hides a circle until the function runs).
"""

import ast
import os
import sys

import pytest

PACKAGE = "megatron_flops"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", PACKAGE)
NOT_CORE = {"cli.py", "__main__.py", "run.py"}
COMMAND_LINE = (f"{PACKAGE}.commands", f"{PACKAGE}.cli")

# Entry-point modules inside adapter packages: ``python -m megatron_flops.demo`` (also under
# torchrun) runs the demo command, so this one file may import the command line.
ENTRY_POINTS = {"demo/__main__.py"}


def imported_modules(source: str, module: str, is_package: bool = False):
    """(line, absolute module name) of every import in ``source``, the source of ``module``
    (``from .x import y`` resolved against it; ``from . import y`` gives ``package.y``)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base)
                if node.module:
                    yield node.lineno, f"{prefix}.{node.module}"
                else:
                    for alias in node.names:
                        yield node.lineno, f"{prefix}.{alias.name}"
            else:
                yield node.lineno, node.module


def _files():
    for folder, _, names in os.walk(ROOT):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT).replace(os.sep, "/"), path


def _module_name(relative: str):
    parts = relative[:-3].split("/")
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts]), is_package


def _imports(relative: str, path: str):
    with open(path, encoding="utf-8") as stream:
        source = stream.read()
    module, is_package = _module_name(relative)
    return list(imported_modules(source, module, is_package))


def _is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


CORE = sorted(rel for rel, _ in _files() if "/" not in rel and rel not in NOT_CORE)
ADAPTERS = sorted(rel for rel, _ in _files()
                  if "/" in rel and not rel.startswith("commands/") and rel not in ENTRY_POINTS)


def test_the_layers_are_found():
    assert {"flops.py", "shapes.py", "meter.py", "legacy.py", "sinks.py", "__init__.py"} <= set(CORE)
    assert {"logs/relog.py", "megatron/hook/runtime.py", "reference/verify.py"} <= set(ADAPTERS)


@pytest.mark.parametrize("relative", CORE)
def test_core_imports_only_the_standard_library_and_the_core(relative):
    core_modules = {f"{PACKAGE}.{name[:-3]}" for name in CORE} | {PACKAGE}
    bad = []
    for line, name in _imports(relative, os.path.join(ROOT, relative)):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            top = ".".join(name.split(".")[:2])
            if top not in core_modules:
                bad.append(f"line {line}: {name}")
        elif not _is_stdlib(name):
            bad.append(f"line {line}: {name} (not in the standard library)")
    assert not bad, f"{relative} is core but imports: {'; '.join(bad)}"


@pytest.mark.parametrize("relative", ADAPTERS)
def test_adapters_never_import_the_command_line(relative):
    bad = [f"line {line}: {name}"
           for line, name in _imports(relative, os.path.join(ROOT, relative))
           if any(name == c or name.startswith(c + ".") for c in COMMAND_LINE)]
    assert not bad, f"{relative} is an adapter but imports the command line: {'; '.join(bad)}"


def test_the_checker_sees_function_level_and_relative_imports():
    source = ("import os\n"
              "from .console import LogRecord\n"
              "def late():\n"
              "    from ..commands.common import UsageError\n"
              "    import torch\n"
              "    from .. import cli\n")
    names = [name for _, name in imported_modules(source, f"{PACKAGE}.logs.relog")]
    assert names == ["os", f"{PACKAGE}.logs.console", f"{PACKAGE}.commands.common", "torch",
                     f"{PACKAGE}.cli"]
    in_package = [name for _, name in imported_modules("from .relog import relog\n",
                                                       f"{PACKAGE}.logs", is_package=True)]
    assert in_package == [f"{PACKAGE}.logs.relog"]


def _module_file(name: str):
    """The source file of the package's module ``name`` (a module or a package), else None."""
    parts = name.split(".")[1:]
    base = os.path.join(ROOT, *parts)
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _import_edges(source: str, module: str, is_package: bool = False):
    """The package's modules that ``source`` (of ``module``) imports: ``from .x import y``
    names the submodule ``x.y`` where there is one, else ``x`` itself."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            names = [f"{target}.{alias.name}" if _module_file(f"{target}.{alias.name}")
                     else target for alias in node.names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                while name != PACKAGE and _module_file(name) is None:
                    name = name.rpartition(".")[0]   # an attribute: its module
                yield name


def import_graph(sources=None):
    """module -> the package's modules it imports; ``sources`` (module -> (source,
    is_package)) defaults to the package's files."""
    if sources is None:
        sources = {}
        for relative, path in _files():
            module, is_package = _module_name(relative)
            with open(path, encoding="utf-8") as stream:
                sources[module] = (stream.read(), is_package)
    return {module: sorted(set(_import_edges(source, module, is_package)) - {module})
            for module, (source, is_package) in sources.items()}


def import_circles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


def test_no_import_circles():
    graph = import_graph()
    assert f"{PACKAGE}.flops" in graph and graph[f"{PACKAGE}.flops"]
    circles = import_circles(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_sees_function_level_and_submodule_imports():
    sources = {
        f"{PACKAGE}.flops": ("from .components import REGISTRY\n", False),
        f"{PACKAGE}.components": ("def late():\n    from .flops import flops_breakdown\n", False),
        f"{PACKAGE}.demo.train": ("from .session import Session\n", False),
        f"{PACKAGE}.demo.session": ("def f():\n    from . import train\n", False),
        f"{PACKAGE}.shapes": ("import os\n", False),
    }
    assert import_circles(import_graph(sources)) == [
        [f"{PACKAGE}.components", f"{PACKAGE}.flops"],
        [f"{PACKAGE}.demo.session", f"{PACKAGE}.demo.train"]]
