"""``megatron-flops patch`` against hostile checkouts (issue 23 item 6): planted links at the
temporary name, a symlinked or hard-linked training module, a full disk, and checkouts patched
by the first version of the command.  The invariant everywhere: nothing outside the checkout
changes, no temporary file is left, the command ends with exit 0/1 or one error line (exit 2),
and a file it did write is this version's block or the original byte for byte."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_flops.cli import main as cli_main

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TRAINING = os.path.join("megatron", "training.py")
OLD_TEMPORARY = TRAINING + ".megatron-flops.tmp"  # the name the command used to write through
# The block the first version of the command appended (commit 9d44bdb,
# src/megatron_flops/megatron/patch.py: BEGIN, _HEADER and _BODY with `except ImportError`),
# written out here by hand, not taken from the module under test.
FIRST_VERSION_BLOCK = (
    "\n"
    "# megatron-flops: begin (added by `megatron-flops patch`: exact throughput reporting; "
    "`megatron-flops patch --revert` removes this block)\n"
    "try:\n"
    "    import megatron_flops.megatron as _megatron_flops\n"
    "    _megatron_flops.install(training_module=__name__)\n"
    "except ImportError as _megatron_flops_error:\n"
    "    print('megatron-flops: not importable (%s); throughput as the fork computes it'"
    " % _megatron_flops_error, flush=True)\n"
    "# megatron-flops: end\n").encode()
SECRET = b"a file outside the checkout: must never change\n"


def digest_tree(root):
    """(relative path -> (kind, sha256 or link target, mode)) of everything under ``root``."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if os.path.islink(path):
                out[os.path.relpath(path, root)] = ("link", os.readlink(path), 0)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = ("file", hashlib.sha256(f.read()).hexdigest(),
                                                        info.st_mode, info.st_nlink)
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def make_world(root, fork="bigscience"):
    """``root/checkout`` (a copy of the fixture fork) and ``root/outside/secret.py``."""
    checkout = os.path.join(root, "checkout")
    shutil.copytree(os.path.join(FIXTURES, f"{fork}_fork"), checkout,
                    ignore=shutil.ignore_patterns("__pycache__"))
    outside = os.path.join(root, "outside")
    os.mkdir(outside)
    secret = os.path.join(outside, "secret.py")
    write(secret, SECRET)
    os.chmod(secret, 0o640)
    return checkout, outside, secret


def run(capsys, argv):
    code = cli_main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 2:
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    return code, captured


def temporary_files(checkout):
    return sorted(name for name in os.listdir(os.path.join(checkout, "megatron"))
                  if "megatron-flops" in name and name.endswith(".tmp"))


# ---- the planted temporary-name link (the must-show) ---------------------------

@pytest.mark.parametrize("fork", ["bigscience", "microsoft"])
def test_planted_temporary_link_changes_nothing_outside_the_checkout(fork, tmp_path, capsys):
    checkout, outside, secret = make_world(str(tmp_path), fork)
    os.symlink(secret, os.path.join(checkout, OLD_TEMPORARY))
    original = read(os.path.join(checkout, TRAINING))
    before = digest_tree(outside)
    assert run(capsys, ["patch", checkout])[0] == 0
    assert digest_tree(outside) == before
    assert read(os.path.join(checkout, TRAINING)).startswith(original)
    assert run(capsys, ["patch", checkout, "--revert"])[0] == 0
    assert digest_tree(outside) == before
    assert read(os.path.join(checkout, TRAINING)) == original
    assert os.readlink(os.path.join(checkout, OLD_TEMPORARY)) == secret  # the plant left alone


# ---- symbolic and hard links on the training module ------------------------------------

def test_symlinked_module_inside_the_checkout_is_edited_at_its_target(tmp_path, capsys):
    checkout, outside, _ = make_world(str(tmp_path))
    link = os.path.join(checkout, TRAINING)
    target = os.path.join(checkout, "megatron", "training_real.py")
    os.rename(link, target)
    os.symlink("training_real.py", link)
    original = read(target)
    code, captured = run(capsys, ["patch", checkout])
    assert code == 0 and "training_real.py: patched" in captured.out
    assert os.readlink(link) == "training_real.py"       # still the link
    assert read(target).startswith(original) and read(target) != original
    assert run(capsys, ["patch", checkout, "--check"])[0] == 0
    assert run(capsys, ["patch", checkout, "--revert"])[0] == 0
    assert os.readlink(link) == "training_real.py" and read(target) == original


def test_symlinked_module_outside_the_checkout_is_refused(tmp_path, capsys):
    checkout, outside, secret = make_world(str(tmp_path))
    link = os.path.join(checkout, TRAINING)
    shutil.copyfile(link, secret)  # a real training module, outside
    os.remove(link)
    os.symlink(secret, link)
    before, inside = digest_tree(outside), digest_tree(checkout)
    for argv in (["patch", checkout], ["patch", checkout, "--revert"]):
        code, captured = run(capsys, argv)
        assert code == 2 and "outside CHECKOUT" in captured.err and "nothing written" in captured.err
    assert digest_tree(outside) == before and digest_tree(checkout) == inside


def test_hard_linked_module_is_refused_and_the_link_kept(tmp_path, capsys):
    checkout, outside, secret = make_world(str(tmp_path))
    path = os.path.join(checkout, TRAINING)
    os.remove(secret)
    os.link(path, secret)
    before, inside = digest_tree(outside), digest_tree(checkout)
    code, captured = run(capsys, ["patch", checkout])
    assert code == 2 and "2 hard links" in captured.err and "nothing written" in captured.err
    assert os.stat(path).st_nlink == 2 and os.path.samefile(path, secret)
    assert digest_tree(outside) == before and digest_tree(checkout) == inside


# ---- a full disk --------------------------------------------------------------------------

FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from megatron_flops.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE needs a POSIX system")
@pytest.mark.parametrize("revert", [False, True])
def test_a_write_that_fails_leaves_no_temporary_file_and_the_module_intact(revert, tmp_path):
    checkout, _, _ = make_world(str(tmp_path))
    path = os.path.join(checkout, TRAINING)
    if revert:
        assert cli_main(["patch", checkout]) == 0
    before = digest_tree(checkout)
    limit = len(read(path)) // 2  # the new content cannot be written whole
    argv = ["patch", checkout] + (["--revert"] if revert else [])
    import megatron_flops  # the child imports the tree under test, wherever it is installed
    src = os.path.dirname(os.path.dirname(os.path.abspath(megatron_flops.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *argv],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "nothing changed" in proc.stderr
    assert temporary_files(checkout) == []
    assert digest_tree(checkout) == before


# ---- checkouts patched by the first version of the command -------------------------------

@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_first_version_checkout_is_upgraded_and_reverted(ending, tmp_path, capsys):
    checkout, _, _ = make_world(str(tmp_path))
    path = os.path.join(checkout, TRAINING)
    original = read(path).replace(b"\n", ending)
    old = FIRST_VERSION_BLOCK.replace(b"\n", ending)
    write(path, original + old)
    code, captured = run(capsys, ["patch", checkout, "--check"])
    assert code == 1 and "outdated" in captured.out
    code, captured = run(capsys, ["patch", checkout])
    assert code == 0 and "upgraded" in captured.out
    upgraded = read(path)
    assert upgraded.startswith(original) and b"except Exception as _megatron_flops_error" in upgraded
    assert b"except ImportError" not in upgraded and upgraded.count(b"# megatron-flops: begin") == 1
    assert run(capsys, ["patch", checkout, "--check"])[0] == 0
    assert run(capsys, ["patch", checkout, "--revert"])[0] == 0
    assert read(path) == original
    # reverting the first version's block directly restores the original too
    write(path, original + old)
    assert run(capsys, ["patch", checkout, "--revert"])[0] == 0
    assert read(path) == original


# ---- hostile checkouts at random -----------------------------------------------------------

MODULE_KINDS = ("file", "link inside", "link outside", "hard link outside", "megatron dir link")
STATES = ("unpatched", "patched", "first version")
PLANT_NAMES = (OLD_TEMPORARY, os.path.join("megatron", ".training.py.tmp"),
               os.path.join("megatron", "training.py~"),
               os.path.join("megatron", ".training.py.megatron-flops.tmp"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(MODULE_KINDS), state=st.sampled_from(STATES),
       plants=st.sets(st.sampled_from(PLANT_NAMES)),
       commands=st.lists(st.sampled_from(["apply", "revert", "check", "dry-run"]),
                         min_size=1, max_size=4))
def test_hostile_checkouts(kind, state, plants, commands, capsys):
    with tempfile.TemporaryDirectory() as root:
        checkout, outside, secret = make_world(root)
        path = os.path.join(checkout, TRAINING)
        original = read(path)
        if state == "patched":
            assert cli_main(["patch", checkout]) == 0
        elif state == "first version":
            write(path, original + FIRST_VERSION_BLOCK)
        capsys.readouterr()
        effective = path
        if kind == "link inside":
            effective = os.path.join(checkout, "megatron", "training_real.py")
            os.rename(path, effective)
            os.symlink("training_real.py", path)
        elif kind == "link outside":
            shutil.copyfile(path, secret)
            os.remove(path)
            os.symlink(secret, path)
        elif kind == "hard link outside":
            os.remove(secret)
            os.link(path, secret)
        elif kind == "megatron dir link":
            moved = os.path.join(outside, "megatron")
            shutil.move(os.path.join(checkout, "megatron"), moved)
            os.symlink(moved, os.path.join(checkout, "megatron"))
        planted = []
        for name in sorted(plants):
            target = os.path.join(outside, f"victim{len(planted)}")
            write(target, SECRET)
            plant = os.path.join(checkout, name)
            if not os.path.lexists(plant):
                os.symlink(target, plant)
                planted.append(name)
        outside_before = digest_tree(outside)
        for command in commands:
            argv = {"apply": ["patch", checkout], "revert": ["patch", checkout, "--revert"],
                    "check": ["patch", checkout, "--check"],
                    "dry-run": ["patch", checkout, "--dry-run"]}[command]
            code, captured = run(capsys, argv)
            assert code in (0, 1, 2)
            assert digest_tree(outside) == outside_before          # nothing outside changed
            leftovers = [n for n in temporary_files(checkout)
                         if os.path.join("megatron", n) not in planted]
            assert leftovers == []
            for name in planted:
                assert os.path.islink(os.path.join(checkout, name))
            if kind in ("link outside", "hard link outside", "megatron dir link"):
                assert code == 2  # refused, whatever was asked
                continue
            data = read(effective)
            if command == "apply":
                assert code == 0
                assert data.startswith(original) and data.count(b"# megatron-flops: begin") == 1
                assert b"except Exception as _megatron_flops_error" in data
            elif command == "revert":
                assert code == 0 and data == original
            if kind == "link inside":
                assert os.readlink(path) == "training_real.py"
