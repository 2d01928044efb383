#!/usr/bin/env python3
"""Module dependency graph of src/: which module uses which (`crate::` and `super::` paths).

Usage: scripts/modgraph.py [--top] [--dot] [SRC]
  --top  collapse to top-level modules (children of `crate`).
  --dot  print Graphviz dot instead of text.
Prints the edges and every cycle (strongly connected component of more than one module);
exits 1 if there is a cycle. Test code (`#[cfg(test)]` modules, `tests.rs`, `tests/`) is
left out: tests may reach across modules. A parent's `mod child;` declaration is not an
edge; a `pub use child::X` re-export is.
"""
import os
import re
import sys


def module_of(path, src):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def non_test_text(text):
    """Drops `#[cfg(test)]` items (brace-balanced) so tests do not add edges."""
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        j = m.end()
        semi, brace = text.find(";", j), text.find("{", j)
        if brace < 0 or (0 <= semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_use_tree(prefix, tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (names only, good enough for modules)."""
    tree = tree.strip()
    m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", tree, re.S)
    if not m:
        return [prefix + tree.split(" as ")[0].strip()]
    head = m.group(1)
    inner = m.group(3)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    base = prefix + (head + "::" if head else "")
    res = []
    for p in parts:
        if p.strip():
            res += expand_use_tree(base, p)
    return res


def main():
    args = sys.argv[1:]
    top = "--top" in args
    dot = "--dot" in args
    rest = [a for a in args if not a.startswith("--")]
    src = rest[0] if rest else "src"
    files = {}
    for d, _, names in os.walk(src):
        for n in names:
            p = os.path.join(d, n)
            if n.endswith(".rs") and n != "tests.rs" and "/tests/" not in p:
                files[module_of(p, src)] = p
    modules = set(files)
    for m in list(modules):
        for k in range(1, len(m)):
            modules.add(m[:k])

    def resolve(path):
        """Longest known module prefix of a path (a tuple of names)."""
        for k in range(len(path), 0, -1):
            if path[:k] in modules:
                return path[:k]
        return None

    edges = set()
    for mod, p in files.items():
        with open(p, encoding="utf-8") as f:
            text = strip_comments(non_test_text(f.read()))
        paths = []
        for m in re.finditer(r"\buse\s+((?:crate|super|self)[^;]*);", text, re.S):
            paths += expand_use_tree("", m.group(1))
        for m in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", text):
            paths.append(m.group(1))
        for path in paths:
            parts = [x.strip() for x in path.split("::") if x.strip()]
            if not parts:
                continue
            base = list(mod)
            is_mod_file = os.path.basename(p) in ("mod.rs", "lib.rs", "main.rs")
            if parts[0] == "crate":
                target = parts[1:]
            elif parts[0] in ("super", "self"):
                # `self` is this module; `super` its parent (a file `a/b.rs` is module a::b).
                cur = base
                while parts and parts[0] in ("super", "self"):
                    if parts[0] == "super":
                        cur = cur[:-1]
                    parts = parts[1:]
                target = list(cur) + parts
            else:
                continue
            t = resolve(tuple(target))
            if t is None or t == mod:
                continue
            if top:
                a, b = mod[:1], t[:1]
                if not a or not b or a == b:
                    continue
            else:
                a, b = mod, t
                # A module using its own child is the module tree, not a dependency.
                if b[: len(a)] == a and not is_mod_file:
                    pass
            if a == b:
                continue
            edges.add(("::".join(a) or "crate", "::".join(b) or "crate"))
    # Tarjan's strongly connected components.
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    if dot:
        print("digraph modules {")
        for a, b in sorted(edges):
            print(f'  "{a}" -> "{b}";')
        print("}")
    else:
        for a in sorted(graph):
            if graph[a]:
                print(f"{a} -> {', '.join(sorted(graph[a]))}")
    print(f"# {len(graph)} modules, {len(edges)} edges, {len(sccs)} cycles", file=sys.stderr)
    for c in sccs:
        inside = sorted((a, b) for a, b in edges if a in c and b in c)
        print("# cycle: " + ", ".join(c), file=sys.stderr)
        for a, b in inside:
            print(f"#   {a} -> {b}", file=sys.stderr)
    sys.exit(1 if sccs else 0)


if __name__ == "__main__":
    main()
