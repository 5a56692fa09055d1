"""The docs are true: the README's Python example runs as printed, the install instructions name
what works, and the legacy bigscience formula's logits are described as it counts them."""

import os
import re

from megatron_flops import legacy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def python_blocks(markdown):
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_python_example_runs_as_printed():
    blocks = python_blocks(read("README.md"))
    assert blocks, "README.md has no ```python block"
    for block in blocks:
        namespace = {"__name__": "readme_example"}
        exec(compile(block, "README.md", "exec"), namespace)  # `...` in its loop is Ellipsis
    # what the example builds is what its text says: a LLaMA-2-7B-like GQA SwiGLU model
    report, meter = namespace["report"], namespace["meter"]
    assert report.iterations == 100 and report.samples == 100 * 1024
    assert namespace["model"].num_query_groups == 8 and namespace["model"].glu
    assert meter.consumed_tokens == 100 * 1024 * 4096


def test_install_instructions_do_not_promise_a_package_index_name():
    """The package is installed from a clone (`pip install .` / `-e .`), not from an index."""
    docs = {"README.md": read("README.md")}
    for name in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if name.endswith(".md"):
            docs[name] = read("docs", name)
    index_install = re.compile(r"pip install\s+['\"]?megatron[-_]flops")
    for name, text in docs.items():
        assert not index_install.search(text), f"{name}: {index_install.search(text).group(0)}"
    readme = docs["README.md"]
    assert "pip install ." in readme and "pip install -e ." in readme
    # the core alone: no extras needed for estimate (pyproject declares no dependencies)
    pyproject = read("pyproject.toml")
    assert not re.search(r"^dependencies\s*=\s*\[\s*['\"]", pyproject, flags=re.M)


def test_bigscience_formula_counts_the_logits_three_times_under_full_recompute():
    """By hand: its vocabulary term is coefficient·f·B·s·l·h²·V/(16·l·h) = 1.5·f·B·s·h·V.

    One pass of the logits, [B·s × h]·[h × V], is 2·B·s·h·V FLOPs; forward + backward is 3
    passes, and the logits are never recomputed.  f = 4 (checkpoint-activations): 6·B·s·h·V,
    exactly 3 passes; f = 3: 4.5·B·s·h·V, 2.25 passes (25 % short).  The shape keeps every
    term a binary fraction (s/6h = 1/16, V/16lh = 1/32), so the floats are exact.
    """
    B, s, l, h, V = 2, 192, 4, 512, 1024
    logits_pass = 2 * B * s * h * V

    def vocabulary_term(checkpoint_activations):
        with_vocab = legacy.bigscience_flops_per_iteration(B, s, l, h, V, False,
                                                           checkpoint_activations)
        without = legacy.bigscience_flops_per_iteration(B, s, l, h, 0, False,
                                                        checkpoint_activations)
        return with_vocab - without

    assert vocabulary_term(True) == 3 * logits_pass
    assert vocabulary_term(False) == 2.25 * logits_pass
    # and the docs say so, not "the logits counted as recomputed"
    assert "three passes of the logits" in " ".join(legacy.__doc__.split())
    relog = " ".join(read("docs", "relog.md").split())
    assert "three passes of the logits with recompute" in relog
    assert "Both count the logits as recomputed" not in relog
