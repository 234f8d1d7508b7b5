"""The house rules (README, developer section), checked on the source: shared modules import only the modules below
them (no cycle, no script importing a script), and no function below a script's main reads or assigns a flag."""

import ast
import glob
import os

import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the shared modules, bottom first: each may import only those before it in this order
LAYERS = ("cli", "stats", "arch", "results", "imagenet", "stream", "figures")
SCRIPTS = ("fzs", "criteria", "ablate", "tuning", "crosscoder", "plot_grids", "plot_ratios", "plot_spectrum", "plot_tuning", "plot_crosscoder", "atlas", "latency", "plot_latency")


def project_imports(path):
    """The project modules a file imports (at any depth: a function's import counts too)."""
    names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & names


def flag_violations(path):
    """['function: FLAG', ...] for every function other than main (and what main nests) that touches a flag."""
    flags = set(cli.flag_names(path))
    with open(path) as f:
        tree = ast.parse(f.read())
    out = []
    for fn in tree.body:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name == "main":
            continue
        params = {a.arg for a in fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs}
        for node in ast.walk(fn):
            if isinstance(node, ast.Global):
                out += [f"{fn.name}: global {n}" for n in node.names]
            elif isinstance(node, ast.Name) and node.id in flags and node.id not in params:
                out.append(f"{fn.name}: {node.id}")
    return sorted(set(out))


def test_every_module_file_is_known():
    """A new root module must be placed in LAYERS or SCRIPTS (so that the rules below cover it)."""
    names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert names == set(LAYERS) | set(SCRIPTS), names ^ (set(LAYERS) | set(SCRIPTS))


def test_shared_modules_import_only_what_sits_below():
    for i, name in enumerate(LAYERS):
        below = set(LAYERS[:i])
        got = project_imports(os.path.join(ROOT, f"{name}.py")) - {name}
        assert got <= below, f"{name}.py imports {sorted(got - below)}, which do not sit below it ({', '.join(LAYERS)})"


def test_no_script_imports_another():
    for name in SCRIPTS:
        got = project_imports(os.path.join(ROOT, f"{name}.py"))
        assert got <= set(LAYERS), f"{name}.py imports the script(s) {sorted(got - set(LAYERS))}"


def test_the_rule_checker_sees_a_planted_flag_global(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("STEPS = 3  # steps\n# ---- end of flags\nFIXED = 2\n\n"
                      "def good(steps):\n    return steps * FIXED\n\n"
                      "def bad():\n    return STEPS\n\n"
                      "def worse():\n    global STEPS\n    STEPS = 4\n\n"
                      "def main():\n    return good(STEPS)\n")
    assert flag_violations(str(script)) == ["bad: STEPS", "worse: STEPS", "worse: global STEPS"]


def test_no_function_below_main_touches_a_flag():
    paths = [os.path.join(ROOT, f"{n}.py") for n in SCRIPTS + ("arch",)] + sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))
    bad = {os.path.relpath(p, ROOT): flag_violations(p) for p in paths}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, "functions that read or assign flags (pass them from main instead):\n" + "\n".join(
        f"  {k}: {', '.join(v)}" for k, v in bad.items())
