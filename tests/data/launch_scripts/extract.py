"""Extract the Megatron flag list of published launch scripts (run by hand, not by the tests).

Reads each script from a git mirror (``git show COMMIT:PATH``), evaluates the simple shell it is
written in -- assignments (``X=…``, ``export X=…``, ``X+=…``), ``$X``/``${X}``/``${X:-d}``
substitution, ``$(( … ))`` arithmetic, ``if [ A = B ]`` / ``[[ … ]]`` tests on resolved
values -- and takes the arguments after the last ``pretrain_*.py`` (or other ``*.py``) entry
point that carries ``--num-layers``.  What cannot be resolved (``$(command)``, backticks,
unset variables) is kept as ``<unresolved:…>`` text so a test can see it.

Usage: python extract.py ../launch_scripts.json   (mirrors of the three repositories under\n/work/.mirror, fetched at the commits recorded in each entry).  Keeps GPT entry points only.
"""

import json
import re
import shlex
import subprocess
import sys

MIRRORS = "/work/.mirror"
SOURCES = {
    "bigscience-workshop/bigscience": (r"^train/.*\.(slurm|sh)$",),
    "bigscience-workshop/Megatron-DeepSpeed": (r"^examples/.*\.(sh|slurm)$",),
    "microsoft/Megatron-DeepSpeed": (r"^examples(_deepspeed)?/.*\.sh$",),
}
LAUNCHER_FLAGS = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr",
                  "--master_port", "--rdzv_endpoint", "--rdzv_backend", "--max_restarts",
                  "--tee", "--num_gpus", "--num_nodes", "--hostfile", "--include",
                  "--master-addr", "--master-port", "--nproc-per-node", "--role", "--rdzv_id"}


def git(repo, *args):
    return subprocess.run(["git", "-C", f"{MIRRORS}/{repo.replace('/', '+')}/repo", *args],
                          check=True, capture_output=True, text=True).stdout


def closing_paren(text, open_index):
    """Index of the parenthesis that closes the one at ``open_index`` (or the end of ``text``)."""
    depth = 0
    for i in range(open_index, len(text)):
        depth += (text[i] == "(") - (text[i] == ")")
        if depth == 0:
            return i
    return len(text)


class Shell:
    def __init__(self):
        self.vars = {"SLURM_JOB_ID": "<unresolved:SLURM_JOB_ID>"}
        self.unresolved = set()

    def sub(self, text):
        # a whole array: "${X[@]}" keeps each element one word, unquoted ${X[@]} splits them
        text = re.sub(r'"\$\{(\w+)\[@\]\}"', lambda m: self.vars.get(m.group(1), ""), text)
        text = re.sub(r"\$\{(\w+)\[[@*]\]\}", lambda m: " ".join(
            shlex.split(self.vars.get(m.group(1), ""))), text)
        text = self._arithmetic(text)
        text = self._commands(text)

        def var(m):
            name = m.group(1) or m.group(2)
            default = m.group(3)
            if name in self.vars:
                value = self.vars[name]
                if value == "" and default is not None:
                    return self.sub(default)
                return value
            if name.isdigit() or name in ("@", "*", "#", "?"):
                self.unresolved.add("$" + name)
                return f"<unresolved:${name}>"
            if default is not None:
                return self.sub(default)
            self.unresolved.add(name)
            return f"<unresolved:${name}>"
        return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+|[@*#?])",
                      lambda m: var(_Match(m.group(1) or m.group(3), None, m.group(2))), text)

    def _commands(self, text):
        """Replace every ``$( … )`` (nested parentheses allowed) and backtick by a marker."""
        text = re.sub(r"`[^`]*`", "<unresolved:command>", text)
        while True:
            start = text.find("$(")
            if start < 0:
                return text
            i = closing_paren(text, start + 1)
            self.unresolved.add(text[start:i + 1])
            text = text[:start] + "<unresolved:command>" + text[i + 1:]

    def _arithmetic(self, text):
        """Replace every ``$(( … ))`` (nested parentheses allowed) by its integer value."""
        while True:
            start = text.find("$((")
            if start < 0:
                return text
            i = closing_paren(text, start + 1)
            inner = text[start + 3:i - 1]
            expr = self.sub(inner)
            expr = re.sub(r"\b[A-Za-z_]\w*\b",
                          lambda m: self.vars.get(m.group(0), f"<unresolved:{m.group(0)}>"), expr)
            if "<unresolved" in expr or not re.fullmatch(r"[\d\s+\-*/%()]+", expr):
                self.unresolved.add(f"$(({inner.strip()}))")
                value = "<unresolved:arithmetic>"
            else:
                value = str(eval(expr.replace("/", "//")))  # integer shell arithmetic
            text = text[:start] + value + text[i + 1:]

    def elements(self, raw):
        """The elements of a bash array literal ``( a "b c" $D )``, substituted."""
        inner = self.sub(raw[1:raw.rfind(")")] if ")" in raw else raw[1:])
        try:
            return shlex.split(inner)
        except ValueError:
            return inner.split()

    def value(self, raw):
        raw = raw.strip()
        if raw.startswith("(") and not raw.startswith("(("):
            # a bash array: its words, substituted, kept as one space-separated string
            return " ".join(shlex.quote(word) for word in self.elements(raw))
        # a value is one shell word: quoted or bare; strip quotes after substitution
        if raw.startswith('"'):
            end = raw.rfind('"')
            return self.sub(raw[1:end])
        if raw.startswith("'"):
            end = raw.rfind("'")
            return raw[1:end]
        if raw.startswith("$(("):
            depth = 0
            for i, c in enumerate(raw):
                depth += (c == "(") - (c == ")")
                if depth == 0 and c == ")":
                    return self.sub(raw[:i + 1])
            return self.sub(raw)
        return self.sub(raw.split()[0] if raw.split() else "")


class _Match:
    def __init__(self, a, b, c):
        self._g = (None, a, b, c)

    def group(self, i):
        return self._g[i]


def logical_lines(text):
    """Join continuations and multi-line double-quoted strings; drop comments and heredocs."""
    out, buf, heredoc = [], "", None
    for line in text.splitlines():
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        stripped = line.strip()
        if not buf and stripped.startswith("#"):
            continue
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m and not buf:
            heredoc = m.group(1)
            out.append(line[:m.start()])
            continue
        if buf and stripped.startswith("#"):
            continue  # a commented-out flag inside a quoted block
        if _open_array(buf or line):
            line = strip_comment(line)  # "--flag v  # note" inside an array: the note only
        buf += (" " if buf else "") + line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        if buf.count('"') % 2:
            continue
        if _open_array(buf):
            continue  # a bash array assignment X=( … ) spread over lines
        out.append(strip_comment(buf))
        buf = ""
    if buf:
        out.append(strip_comment(buf))
    return out


def _open_array(text):
    """True while a ``X=(`` / ``X+=(`` array assignment has not met its closing parenthesis."""
    m = re.match(r"^\s*(?:export\s+|local\s+|declare\s+(?:-\w+\s+)?)?[A-Za-z_]\w*\+?=\(", text)
    if not m:
        return False
    body = strip_comment(text[m.end() - 1:])
    return body.count("(") > body.count(")")


def strip_comment(line):
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t;"):
            return line[:i]
    return line


def condition(shell, text):
    """Truth of a simple test; None when it cannot be decided."""
    m = re.match(r"\s*(?:if|elif)\s+\[\[?\s*(.*?)\s*\]\]?\s*;?\s*(then)?\s*$", text)
    if not m:
        return None
    expr = shell.sub(m.group(1))
    try:
        words = shlex.split(expr)
    except ValueError:
        return None
    if any("<unresolved" in w for w in words):
        return None
    if len(words) == 3:
        a, op, b = words
        if op in ("=", "=="):
            return a == b
        if op == "!=":
            return a != b
        ops = {"-eq": int.__eq__, "-ne": int.__ne__, "-gt": int.__gt__, "-lt": int.__lt__,
               "-ge": int.__ge__, "-le": int.__le__}
        if op in ops:
            try:
                return ops[op](int(a), int(b))
            except ValueError:
                return None
    if len(words) == 2 and words[0] in ("-z", "-n"):
        return (words[1] == "") == (words[0] == "-z")
    return None


ASSIGN = re.compile(r"^\s*(?:export\s+|local\s+|declare\s+(?:-\w+\s+)?)?([A-Za-z_]\w*)(\+?)=(.*)$")


def run_script(text):
    shell = Shell()
    commands = []
    stack = []  # per if-block: (taking, any_branch_taken, undecided)
    notes = set()
    for line in logical_lines(text):
        for part in split_statements(line):
            s = part.strip()
            if not s:
                continue
            if re.match(r"^(if|elif)\b", s):
                c = condition(shell, s)
                if c is None:
                    notes.add(f"undecided condition taken as true: {s}")
                    c = True
                if s.startswith("if"):
                    parent = all(t for t, _ in stack)
                    stack.append([parent and c, c])
                else:
                    parent = all(t for t, _ in stack[:-1])
                    taken_before = stack[-1][1]
                    stack[-1] = [parent and c and not taken_before, taken_before or c]
                continue
            if s in ("else",):
                if stack:
                    parent = all(t for t, _ in stack[:-1])
                    stack[-1] = [parent and not stack[-1][1], True]
                continue
            if s in ("fi",):
                if stack:
                    stack.pop()
                continue
            if s in ("then", "do", "done") or s.startswith(("for ", "while ", "case ")):
                continue
            if not all(t for t, _ in stack):
                continue
            m = ASSIGN.match(s)
            if m:
                name, plus, raw = m.groups()
                value = shell.value(raw)
                joined = " " if plus and raw.strip().startswith("(") and shell.vars.get(name) else ""
                shell.vars[name] = shell.vars.get(name, "") + joined + value if plus else value
                if ".py" in value:
                    commands.append(value)
                continue
            if s.startswith(("echo", "printf", "cat ", "mkdir", "cd ", "set ", "source")):
                continue
            commands.append(shell.sub(s))
    return shell, commands, sorted(notes)


def split_statements(line):
    parts, quote, cur = [], None, ""
    for c in line:
        if quote:
            cur += c
            if c == quote:
                quote = None
            continue
        if c in "\"'":
            quote = c
        if c == ";" and not quote:
            parts.append(cur)
            cur = ""
            continue
        cur += c
    parts.append(cur)
    out = []
    for p in parts:
        p = p.strip()
        m = re.match(r"^(then|do|else)\s+(.*)$", p)
        if m:
            out.extend([m.group(1), m.group(2)])
        else:
            out.append(p)
    return out


def megatron_args(commands):
    """(entry point, argument words) of the last command running a *.py with --num-layers."""
    best = None
    for cmd in commands:
        try:
            words = shlex.split(cmd)
        except ValueError:
            words = cmd.split()
        for i, w in enumerate(words):
            if w.endswith(".py") and "--num-layers" in words[i + 1:]:
                best = (w.rsplit("/", 1)[-1], words[i + 1:])
                break
    return best


def flag_list(words):
    out = []
    for w in words:
        if w in ("2>&1", "|", "&>", ">", ">>", "&&", "||") or w.startswith(("2>", "&>", ">")):
            break
        if w.startswith("|"):
            break
        out.append(w.replace("'", ""))
    return out


def world(shell, text):
    nodes = re.search(r"#SBATCH\s+(?:--nodes[= ]|-N\s*)(\d+)", text)
    gpus = re.search(r"#SBATCH\s+--gres=gpu:(\d+)", text)
    per_node = shell.vars.get("GPUS_PER_NODE") or shell.vars.get("NUM_GPUS_PERNODE") or shell.vars.get("GPUS_PER_NODE")
    found = {}
    if nodes:
        found["nodes"] = int(nodes.group(1))
    if gpus:
        found["gpus_per_node"] = int(gpus.group(1))
    elif per_node and per_node.isdigit():
        found["gpus_per_node"] = int(per_node)
    for key in ("NUM_NODE", "NUM_NODES", "NNODES"):
        v = shell.vars.get(key)
        if "nodes" not in found and v and v.isdigit():
            found["nodes"] = int(v)
    for key in ("NUM_GPUS", "WORLD_SIZE"):
        v = shell.vars.get(key)
        if v and v.isdigit():
            found["world_size_stated"] = int(v)
    if "nodes" in found and "gpus_per_node" in found:
        found["world_size"] = found["nodes"] * found["gpus_per_node"]
    elif "world_size_stated" in found:
        found["world_size"] = found["world_size_stated"]
    return found


def main(out_path):
    entries = []
    for repo, (pattern,) in SOURCES.items():
        commit = git(repo, "rev-parse", "HEAD").strip()
        for path in git(repo, "ls-tree", "-r", "--name-only", "HEAD").splitlines():
            if not re.match(pattern, path):
                continue
            text = git(repo, "show", f"HEAD:{path}")
            shell, commands, notes = run_script(text)
            found = megatron_args(commands)
            if found is None:
                continue
            entry, words = found
            flags = flag_list(words)
            entries.append({
                "source": repo, "commit": commit, "path": path, "entry_point": entry,
                "flags": flags,
                "unresolved": sorted(v for v in shell.unresolved if any(v in f for f in flags)
                                     or any(f"${v}" in f or "{" + v in f for f in flags)),
                "unresolved_in_flags": sorted({m for f in flags for m in re.findall(r"<unresolved:[^>]*>", f)}),
                "notes": notes,
                **world(shell, text),
            })
    with open(out_path, "w") as fh:
        json.dump(entries, fh, indent=1)
    print(len(entries), "scripts")




GPT_ENTRY_POINTS = ("pretrain_gpt.py", "pretrain_prefix_lm.py", "finetune_t0.py",
                    "finetune_t0_non_causal_decoder.py", "finetune_gpt.py")
SIZE = re.compile(r"(?<![\dA-Za-z])(?:(\d+)[Bb](\d+)|(\d+(?:\.\d+)?)([BMTbmt]))(?![a-z])")


def published_size(path):
    """The model size the script's file name states ("1B3" → 1.3e9, "350M", "6.7B"), or None."""
    name = path.rsplit("/", 1)[-1].replace("_", "-")
    m = SIZE.search(name)
    if m is None:
        return None
    whole, frac, number, unit = m.groups()
    if whole is not None:
        return {"name": m.group(0), "parameters": float(f"{whole}.{frac}") * 1e9}
    scale = {"M": 1e6, "B": 1e9, "T": 1e12}[unit.upper()]
    return {"name": m.group(0), "parameters": float(number) * scale}


def finalize(raw_path, out_path):
    entries = [e for e in json.load(open(raw_path)) if e["entry_point"] in GPT_ENTRY_POINTS]
    for e in entries:
        e["published_size"] = published_size(e["path"])
    with open(out_path, "w") as fh:
        json.dump(entries, fh, indent=1)
    return entries


if __name__ == "__main__":
    main("/tmp/launch_scripts_all.json")
    finalize("/tmp/launch_scripts_all.json", sys.argv[1])
