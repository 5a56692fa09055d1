"""Build ``tests/data/megatron_lm_flags.json``: every command-line flag NVIDIA Megatron-LM's own
parsers define at the recorded commit (run by hand, not by the tests).

The flags are read from the parsers themselves, not from the source text: Megatron-LM builds
many flags from config dataclasses (``ArgumentGroupFactory``, with exclusion lists and
``--no-``/``--disable-`` spellings), so only running ``add_megatron_arguments`` gives the true
list.  Its import chain needs packages this machine lacks: ``triton`` is stubbed,
``torch.compile``/``torch.jit.script`` are made identity decorators and ``typing.override``
(Python 3.12) is supplied — none of it touches argument parsing.

Usage: ``python megatron_lm_flags.py CHECKOUT COMMIT OUT.json`` where CHECKOUT holds
``megatron/`` and ``examples/`` of NVIDIA/Megatron-LM at COMMIT (``git archive COMMIT megatron
examples/multimodal examples/mimo | tar -x -C CHECKOUT``; an empty ``examples/__init__.py``
makes the examples' parsers importable).
"""

import argparse
import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import typing
from unittest import mock

import torch
import torch.utils.flop_counter  # noqa: F401  (imported before the triton stub exists)

PARSERS = (
    ("megatron/training/arguments.py", "megatron.training.arguments", "add_megatron_arguments"),
    ("examples/multimodal/multimodal_args.py", "examples.multimodal.multimodal_args",
     "add_multimodal_extra_args"),
    ("megatron/post_training/arguments.py", "megatron.post_training.arguments",
     "add_modelopt_args"),
    ("examples/mimo/train.py", "examples.mimo.train", "add_mimo_args"),
)
# what the examples' import chains need and the CPU machine lacks (none of it parses flags)
STUBBED = ("triton",)
# parsers whose module cannot be imported here (MiMo's train.py pulls in its data loaders): the
# option strings of the function's literal ``add_argument`` calls, read from the source
READ_FROM_SOURCE = {"examples/mimo/train.py"}


def _installed(name):
    try:
        return "." not in name and importlib.machinery.PathFinder.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if any(name == stub or name.startswith(stub + ".") for stub in STUBBED) and not \
                _installed(name):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__, module.__name__ = [], spec, spec.name
        module.__version__ = "0"
        return module

    def exec_module(self, module):
        pass


def _literal_options(path, function):
    tree = ast.parse(open(path).read())
    body = next(node for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and node.name == function)
    return sorted({arg.value for call in ast.walk(body) if isinstance(call, ast.Call)
                   and getattr(call.func, "attr", None) == "add_argument"
                   for arg in call.args if isinstance(arg, ast.Constant)
                   and str(arg.value).startswith("--")})


def main(checkout, commit, out_path):
    torch.compile = lambda f=None, *a, **k: f if callable(f) else (lambda g: g)
    torch.jit.script = lambda f=None, *a, **k: f
    if not hasattr(typing, "override"):
        typing.override = lambda f: f
    sys.meta_path.insert(0, _Stubs())
    sys.path.insert(0, checkout)
    out = {"source": "NVIDIA/Megatron-LM", "commit": commit, "parsers": {}}
    for path, module, function in PARSERS:
        if path in READ_FROM_SOURCE:
            out["parsers"][f"{path}::{function}"] = _literal_options(f"{checkout}/{path}", function)
            continue
        parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
        getattr(importlib.import_module(module), function)(parser)
        out["parsers"][f"{path}::{function}"] = sorted(
            option for action in parser._actions for option in action.option_strings)
    with open(out_path, "w") as fh:
        json.dump(out, fh, indent=0)
        fh.write("\n")
    print({name: len(flags) for name, flags in out["parsers"].items()})


if __name__ == "__main__":
    main(*sys.argv[1:4])
