"""The stable Python surface is one list (docs/api.md): the public modules' ``__all__``.

Every name exported resolves; docs/api.md names each of them; README.md and docs/*.md name
no other Python path of the package (a dotted ``megatron_flops.…``) than a public module,
one of its exported names, or an entry point run with ``python -m``.
"""

import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the public modules; the last three need torch (the ``torch`` extra)
PUBLIC = ("megatron_flops", "megatron_flops.components", "megatron_flops.megatron",
          "megatron_flops.logs", "megatron_flops.reference.model",
          "megatron_flops.reference.verify", "megatron_flops.profile.scopes")
NEEDS_TORCH = {"megatron_flops.reference.model", "megatron_flops.reference.verify",
               "megatron_flops.profile.scopes"}
# ``python -m …`` entry points (docs name them as commands, not as imports)
ENTRY_POINTS = ("megatron_flops.run", "megatron_flops.demo")


def _module(name):
    if name in NEEDS_TORCH:
        pytest.importorskip("torch")
    return importlib.import_module(name)


def _docs():
    texts = {"README.md": open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()}
    for name in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if name.endswith(".md"):
            with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as stream:
                texts[f"docs/{name}"] = stream.read()
    return texts


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_resolves(name):
    module = _module(name)
    assert module.__all__, f"{name} exports nothing"
    missing = [attribute for attribute in module.__all__ if not hasattr(module, attribute)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"


def test_docs_api_names_every_public_module_and_name():
    api = _docs()["docs/api.md"]
    for name in PUBLIC:
        assert f"`{name}`" in api, f"docs/api.md does not name {name}"
        if name in NEEDS_TORCH and importlib.util.find_spec("torch") is None:
            continue
        for attribute in importlib.import_module(name).__all__:
            assert re.search(rf"`{re.escape(attribute)}\b", api), \
                f"docs/api.md does not document {name}.{attribute}"


def _public_names():
    names = set()
    for name in PUBLIC:
        if name in NEEDS_TORCH and importlib.util.find_spec("torch") is None:
            continue
        names |= {f"{name}.{attribute}" for attribute in importlib.import_module(name).__all__}
    return names


def is_public(dotted, names):
    """A public module or entry point, an exported name, or an attribute of one
    (``megatron_flops.ThroughputMeter.add_iteration``) — never a module below a public one."""
    if dotted in PUBLIC or dotted in ENTRY_POINTS:
        return True
    parts = dotted.split(".")
    return any(".".join(parts[:end]) in names for end in range(2, len(parts) + 1))


def test_docs_name_only_public_python_paths():
    names = _public_names()
    bad = []
    for path, text in _docs().items():
        for match in re.finditer(r"megatron_flops(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text):
            if not is_public(match.group(0), names):
                line = text.count("\n", 0, match.start()) + 1
                bad.append(f"{path}:{line}: {match.group(0)}")
    assert not bad, "docs name non-public paths (docs/api.md lists the public ones):\n" + \
        "\n".join(bad)


def test_the_docs_checker_sees_a_private_path():
    names = _public_names()
    assert is_public("megatron_flops.megatron.install", names)
    assert is_public("megatron_flops.ThroughputMeter.add_iteration", names)
    assert is_public("megatron_flops.run", names)
    assert not is_public("megatron_flops.logs.intervals", names)
    assert not is_public("megatron_flops.megatron.args.shapes_from_args", names)
    assert not is_public("megatron_flops.megatron.hook.install", names)
