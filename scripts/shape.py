#!/usr/bin/env python3
"""Code shape figures: non-test lines per source file and functions over a length limit.

Usage: scripts/shape.py [--file-limit N] [--fn-limit N] [DIR]
Non-test lines exclude `#[cfg(test)]` items (inline test modules) and files that are test
modules (`tests.rs`, `*/tests/*.rs`). Prints files over the file limit, functions over the
function limit, and exits 1 if any.
"""
import os
import re
import sys


def strip_comments_strings(line, state):
    """Return the line with string/char literals and comments blanked, tracking block comments."""
    out = []
    i = 0
    n = len(line)
    while i < n:
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"] = False
            i = j + 2
            continue
        if state["raw"] is not None:
            j = line.find(state["raw"], i)
            if j < 0:
                return "".join(out)
            i = j + len(state["raw"])
            state["raw"] = None
            continue
        if state["str"]:
            c = line[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                state["str"] = False
            i += 1
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = True
            i += 2
            continue
        m = re.match(r'b?r(#*)"', line[i:])
        if m and (i == 0 or not (line[i - 1].isalnum() or line[i - 1] == "_")):
            state["raw"] = '"' + m.group(1)
            i += m.end()
            continue
        if c == '"':
            state["str"] = True
            i += 1
            continue
        if c == "'":
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", line[i:])
            if m:
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def analyse(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    state = {"block": False, "raw": None, "str": False}
    code = [strip_comments_strings(l, state) for l in lines]
    test_lines = set()
    fns = []
    depth = 0
    pending_cfg_test = False
    test_until_depth = None  # depth at which the current test item started
    fn_re = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
    open_fns = []  # (name, start line, depth before its body)
    pending_fn = None
    for idx, c in enumerate(code):
        stripped = c.strip()
        in_test = test_until_depth is not None
        if re.match(r"#\[cfg\(test\)\]", stripped) and not in_test:
            pending_cfg_test = True
            test_lines.add(idx)
            continue
        if pending_cfg_test and not in_test:
            test_lines.add(idx)
            if stripped.endswith(";") and "{" not in stripped:
                # `mod tests;` or a single-line item
                pending_cfg_test = False
                continue
            if "{" in stripped:
                test_until_depth = depth
                pending_cfg_test = False
        elif in_test:
            test_lines.add(idx)
        m = fn_re.search(c)
        if m and test_until_depth is None:
            pending_fn = (m.group(1), idx)
        for ch in c:
            if ch == "{":
                if pending_fn is not None:
                    open_fns.append((pending_fn[0], pending_fn[1], depth))
                    pending_fn = None
                depth += 1
            elif ch == "}":
                depth -= 1
                if open_fns and open_fns[-1][2] == depth:
                    name, start, _ = open_fns.pop()
                    fns.append((name, start + 1, idx - start + 1))
                if test_until_depth is not None and depth == test_until_depth:
                    test_until_depth = None
            elif ch == ";" and pending_fn is not None:
                pending_fn = None  # declaration without a body
    non_test = sum(1 for i in range(len(lines)) if i not in test_lines)
    return non_test, fns


def is_test_file(path):
    base = os.path.basename(path)
    return base == "tests.rs" or "/tests/" in path


def main():
    args = sys.argv[1:]
    file_limit, fn_limit, root = 700, 100, "src"
    while args:
        a = args.pop(0)
        if a == "--file-limit":
            file_limit = int(args.pop(0))
        elif a == "--fn-limit":
            fn_limit = int(args.pop(0))
        else:
            root = a
    rows, long_fns = [], []
    for d, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            p = os.path.join(d, name)
            if is_test_file(p):
                continue
            n, fns = analyse(p)
            rows.append((n, p))
            long_fns += [(l, p, fname, s) for fname, s, l in fns if l > fn_limit]
    rows.sort(reverse=True)
    print(f"largest files (non-test lines), limit {file_limit}:")
    for n, p in rows[:10]:
        print(f"  {n:5} {p}{'  OVER' if n > file_limit else ''}")
    print(f"functions over {fn_limit} lines: {len(long_fns)}")
    for l, p, fname, s in sorted(long_fns, reverse=True):
        print(f"  {l:5} {p}:{s} {fname}")
    over = [r for r in rows if r[0] > file_limit]
    sys.exit(1 if over or long_fns else 0)


if __name__ == "__main__":
    main()
