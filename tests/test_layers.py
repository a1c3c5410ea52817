"""The import layers, read from the source (no import runs): a lower layer never imports an upper one. The
intervention layer sits beside the training core, below the drivers: it reads the agent's roles and
capabilities from what the config layer hands it (plastic.config.make_intervention), never from agents/.

Also read from the source: every citation of a document in a comment, docstring or doc names a file of the
repository (and a section or heading that file has), never a specification outside it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ("plastic.drivers", "plastic.loop", "plastic.setup", "plastic.programs", "plastic.cli", "plastic.config", "experiments")
# package (a folder of the repository) -> modules it must not import (a prefix forbids its submodules too)
FORBIDDEN = {
    "plastic/interventions": ("agents", *DRIVERS),
    "agents": ("plastic.interventions", *DRIVERS),
    "metrics": ("agents", "plastic.interventions", *DRIVERS),
}


def imports(path: Path):
    """(line, module) of every import in a file, top-level or nested."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def hits(module: str, forbidden) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no python files under {package}"
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}" for f in files for line, mod in imports(f)
           if hits(mod, FORBIDDEN[package])]
    assert not bad, "upward imports:\n" + "\n".join(bad)


# The layers of the package, bottom to top (docs/architecture.md, Layers): a module imports from its own layer
# or below, also inside a function. Agents and interventions share a layer and never import each other
# (FORBIDDEN above). A module of plastic/, agents/ or metrics/ that no entry names fails the test: place it.
LAYERS = (
    ("base", ("metrics", "plastic", "plastic.fields", "plastic.seed_axis", "plastic.shuffle", "plastic.networks",
              "plastic.optim", "plastic.normalize", "plastic.replay", "plastic.packing", "plastic.checkpoint",
              "plastic.logger", "plastic.jaxenvs", "plastic.envs", "plastic.nonstationary", "plastic.suites")),
    ("core", ("plastic.core", "plastic.agent", "plastic.surgery")),
    ("agents and interventions", ("agents", "plastic.interventions", "plastic.monitor")),
    ("config", ("plastic.config", "plastic.sharding", "plastic.slurm")),
    ("drivers", ("plastic.setup", "plastic.programs", "plastic.loop", "plastic.evaluation", "plastic.drivers")),
    ("cli", ("plastic.cli", "plastic.sweep")),
)


def module_graph(root: Path = ROOT) -> dict:
    """module -> the package's modules it imports (`from plastic import loop` counts as plastic.loop)."""
    files = {}
    for pkg in ("plastic", "agents", "metrics"):
        for f in sorted((root / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = f
    graph = {}
    for name, f in files.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = sorted(m for m in found if m in files and m != name)
    return graph


def layer_of(module: str):
    """The index of the layer whose entry is the longest prefix of `module` (None: no layer names it)."""
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    return None if best is None else best[1]


def test_every_module_imports_from_its_layer_or_below():
    graph = module_graph()
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    up = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
          for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)]
    assert not up, "upward imports:\n" + "\n".join(up)


def import_circles(graph: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert import_circles(module_graph()) == []
    assert import_circles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_the_check_sees_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from agents.td3 import TD3\n    import plastic.drivers as t\n")
    found = [m for _, m in imports(f) if hits(m, FORBIDDEN["plastic/interventions"])]
    assert found == ["agents.td3", "plastic.drivers"]


# ---- citations: a comment that cites a document names a file of the repository ------------------------------
# The methods were planned from specification files that are not part of the repository; the definitions the
# code relies on live in docs/ (docs/metrics.md, docs/mechanics.md, docs/interventions.md). A citation names one
# of those files with its path, `docs/metrics.md §5` (a section heading of that file: `## 5.` or `### 5.2`) or
# `docs/interventions.md, ReDo` (a heading of that file starting with that name), or it names nothing.
CITING = ("plastic", "agents", "metrics", "experiments", "tests", "docs", "benchmarks", "README.md")
CITING_SUFFIXES = (".py", ".md", ".yaml")
SPEC_NAMES = r"(?:metrics|interventions|validation|mechanics|shared[-]mechanics)"  # [-]: keeps grep quiet here
NUM = r"\d+(?:\.\d+)*"
# a spec folder outside the repository, the shared mechanics spec, or a spec file named without its docs/ path
# (the separator may run over a line break, a comment marker or a string literal's quotes)
OUTSIDE = re.compile(r"(?<![\w-])spec[s]/|(?<!docs/)shared[-]mechanics"
                     rf"|(?<![\w/-]){SPEC_NAMES}\.md`?[\s#\"']*§")
DOC_SECTION = re.compile(rf"\bdocs/([\w/.-]+?\.md)`?[\s#\"']*§\s*({NUM})(?:[-–]({NUM}))?")
NEXT_SECTION = re.compile(rf"([^§().;\n]{{0,30}}?)§\s*({NUM})(?:[-–]({NUM}))?")  # `§1, §3` or `§1 x, §2 y`
DOC_HEADING = re.compile(r"\bdocs/([\w/.-]+?\.md)`?, ([A-Z][^;:,.()`\n]*)")


def citing_files():
    here = Path(__file__).resolve()
    for name in CITING:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in CITING_SUFFIXES)
        yield from (f for f in files if f.resolve() != here and "__pycache__" not in f.parts)


def headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text().splitlines() if re.match(r"#{1,6}\s", line)]


def has_section(heads: list[str], number: str) -> bool:
    """A heading numbered `number` (`4. Title`, `10.1 Title`) or labelled with it (`Title — §4`)."""
    return any(re.match(rf"{re.escape(number)}\.?(\s|$)", h) or h.endswith(f"§{number}") for h in heads)


def citation_errors(path: Path, root: Path = ROOT) -> list[str]:
    """`file:line what` for every citation in `path` that points outside the repository, names a docs/ file that
    does not exist, or a section or heading that file does not have."""
    text, errors, cache = path.read_text(), [], {}
    rel = path.relative_to(root) if path.is_relative_to(root) else path

    def where(pos: int) -> str:
        return f"{rel}:{text.count(chr(10), 0, pos) + 1}"

    def doc(name):
        if name not in cache:
            f = root / "docs" / name
            cache[name] = headings(f) if f.is_file() else None
        return cache[name]

    for m in OUTSIDE.finditer(text):
        start = m.start() - len(re.search(r"[^\s(]*$", text[:m.start()]).group(0))
        cited = text[start:m.end()] + re.match(r"[^\s),;]*", text[m.end():]).group(0)
        errors.append(f"{where(m.start())} cites {cited!r}, outside the repository (cite docs/...)")
    for m in DOC_SECTION.finditer(text):
        heads = doc(m.group(1))
        if heads is None:
            errors.append(f"{where(m.start())} cites docs/{m.group(1)}, which does not exist")
            continue
        numbers, end = [m.group(2), m.group(3)], m.end()
        while (n := NEXT_SECTION.match(text, end)) and "docs/" not in n.group(1):
            numbers, end = numbers + [n.group(2), n.group(3)], n.end()
        errors += [f"{where(m.start())} cites docs/{m.group(1)} §{num}, which has no heading for it"
                   for num in numbers if num and not has_section(heads, num)]
    for m in DOC_HEADING.finditer(text):
        heads, name = doc(m.group(1)), m.group(2).strip()
        if heads is None:
            errors.append(f"{where(m.start())} cites docs/{m.group(1)}, which does not exist")
        elif not any(h.startswith(name) for h in heads):
            errors.append(f"{where(m.start())} cites docs/{m.group(1)}, {name!r}: no heading starts so")
    return errors


def test_every_citation_names_a_file_of_the_repository():
    errors = [e for f in citing_files() for e in citation_errors(f)]
    assert not errors, "citations that do not resolve in the repository:\n" + "\n".join(errors)


def test_the_citation_check_sees_bad_citations(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "metrics.md").write_text("# M\n\n## 4. FAU\n\n### 10.1 Network A\n")
    (tmp_path / "docs" / "interventions.md").write_text("# I\n\n## ReDo (`--intervention redo`) — §2\n")
    good = ("docs/metrics.md §4 and §10.1; docs/metrics.md §4-10.1; docs/interventions.md §2; "
            "(docs/interventions.md, ReDo)\n")
    bad = ["../shared/" + "spec" + "s/metrics.md", "metrics" + ".md §4", "`interventions" + ".md` §9",
           "shared" + "-mechanics §3.3", "(interventions" + ".md\n§5.1", "# metrics" + ".md\n# §4",
           "docs/metrics.md §5", "docs/metrics.md §4, §7", "docs/metrics.md §1.2-4",
           "docs/nothing.md §1", "docs/interventions.md, GTR", "docs/metrics.md §10"]
    f = tmp_path / "m.py"
    f.write_text(good)
    assert citation_errors(f, tmp_path) == []
    for text in bad:
        f.write_text(good + text + "\n")
        assert len(citation_errors(f, tmp_path)) == 1, text


# ---- tests reach the code through public seams ------------------------------------------------------------
PACKAGES = ("plastic", "agents", "metrics", "experiments")


def private_names(trees) -> set[str]:
    """The private names (`_x`, not dunders) the parsed files define: functions, classes, methods, module-level
    names and attributes assigned on `self`."""
    out = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                out.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                out.add(node.id)
    return {n for n in out if n.startswith("_") and not n.startswith("__")}


def private_reads(test: Path, project: set[str]) -> list[str]:
    """`obj._x` in a test file where `_x` is a private name of the project's code and not one the test file defines
    itself (its own helper classes); `self._x` and NamedTuple's public `_replace` & co. are fine."""
    tree = ast.parse(test.read_text())
    own = private_names([tree])
    return [f"{test.name}:{n.lineno}: .{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in project - own
            and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
            and n.attr not in ("_replace", "_fields", "_asdict", "_make")]


def test_tests_read_no_private_member_of_the_code():
    """What a test needs to inspect is a public seam of the code (docs/architecture.md lists the drivers')."""
    project = private_names(ast.parse(p.read_text()) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    bad = [hit for test in sorted((ROOT / "tests").glob("*.py")) for hit in private_reads(test, project)]
    assert not bad, bad


def test_the_private_read_check_sees_one(tmp_path):
    test = tmp_path / "test_x.py"
    test.write_text("def test_a(env):\n    env._reset(0)\n    self_like = env._own\n\nclass T:\n    _own = 1\n")
    assert private_reads(test, {"_reset", "_own"}) == ["test_x.py:2: ._reset"]
