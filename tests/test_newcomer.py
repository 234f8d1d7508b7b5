"""What a newcomer meets at the command line: --help without duplicated or empty defaults, a mistyped flag answered
in one line with the closest flag, suggested commands that never carry an unknown weights id, and plot_grids.py
stopping with the fzs.py command when there is nothing to draw."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

import cli
import results
from conftest import run_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py"))
                 if cli.FLAGS_END in open(p).read())


def script_globals(name):
    """What configure() finds in a script's globals: its file, docstring and flags at their default values."""
    path = os.path.join(ROOT, name)
    tree = ast.parse(open(path).read())
    g = {"__file__": path, "__doc__": ast.get_docstring(tree)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                g[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return g


def help_text(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag's text: an entry is never cut inside "(default: ...)"
    with pytest.raises(SystemExit) as e:
        cli.configure(script_globals(name), ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def flag_entries(text):
    """{first flag: its entry, whitespace joined} from argparse's --help output (an entry starts at '  -')."""
    options = text.split("options:", 1)[1]
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", options) if e.strip()]
    return {e.split(" ")[0].rstrip(","): e for e in entries}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_has_no_duplicated_or_empty_default(name, capsys, monkeypatch):
    entries = flag_entries(help_text(name, capsys, monkeypatch))
    assert len(entries) >= len(cli.flag_names(os.path.join(ROOT, name))), sorted(entries)
    bad = [f"{flag}: {text}" for flag, text in entries.items() if text.count("(default") > 1 or "(default: )" in text]
    assert not bad, f"{name} --help: " + " | ".join(bad)


def test_the_help_entries_are_read(capsys, monkeypatch):
    entries = flag_entries(help_text("fzs.py", capsys, monkeypatch))
    assert entries["--steps"].endswith("(default: 2560)") and "(default: arch.jitter's rule" in entries["--jitter"]
    assert entries["--jitter"].count("(default") == 1  # the comment says its default: none is added
    assert "(default" not in flag_entries(help_text("ablate.py", capsys, monkeypatch))["--data"]  # required: no empty default


@pytest.mark.parametrize("argv, line", [
    (["--chanels", "0:4"], "error: unknown flag --chanels; did you mean --channels?"),
    (["--stepz=16"], "error: unknown flag --stepz; did you mean --steps?"),
    (["--layers", "2.1", "--qqqqqq", "1"], "error: unknown flag --qqqqqq"),
    (["--channel", "0:4"], "error: unknown flag --channel; did you mean --channels?"),  # no silent abbreviation
])
def test_a_mistyped_flag_is_one_line_with_the_closest_flag(argv, line, capsys):
    with pytest.raises(SystemExit) as e:
        cli.configure(script_globals("fzs.py"), argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{line} (python fzs.py --help lists the flags)"], err


def test_a_mistyped_flag_from_the_shell():
    p = subprocess.run([sys.executable, "criteria.py", "--blocs", "2.1"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        "error: unknown flag --blocs; did you mean --blocks? (python criteria.py --help lists the flags)"], p.stderr


@pytest.mark.parametrize("weights", ["unknown", None, ""])
def test_no_suggested_command_carries_an_unknown_weights_id(weights):
    made = [results.fzs_command(["layer2.0"], "resnet18", weights), results.command("ablate.py", "--stages sweep", "resnet18", weights),
            results.natural_command("resnet18", weights), results.fzs_command(["layer2.0"], "resnet50", weights, "r")]
    assert made[0] == "python fzs.py --layers layer2.0"
    assert made[3] == "python fzs.py --layers layer2.0 --arch resnet50 --results r"
    assert not [c for c in made if "unknown" in c or "--weights None" in c or c.endswith("--weights") or "--weights  " in c], made
    assert results.fzs_command(["layer2.0"], "resnet18", "random:0").endswith("--weights random:0")  # a known id stays


def test_plot_grids_with_no_fzs_names_the_command_and_draws_nothing(tmp_path):
    p = run_in_process("plot_grids.py", "--results", str(tmp_path), "--channels", "2.1:0,1,2,3;3.1:5")
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"error: no FZs in {tmp_path}/fzs for channels 2.1:0:4;3.1:5")
    assert (f"python fzs.py --layers layer2.0,layer2.1.bn2,layer2.1 --objectives center,channel --channels 0:4 --results "
            f"{tmp_path}; python fzs.py --layers layer3.0,layer3.1.bn2,layer3.1") in p.stderr
    assert "unknown" not in p.stderr and not os.path.exists(results.figures_dir(str(tmp_path)))


@pytest.mark.parametrize("script,makes", [("plot_spectrum.py", "python criteria.py"), ("plot_grids.py", "python criteria.py"),
                                          ("plot_tuning.py", "python tuning.py"), ("tuning.py", "python ablate.py --stages natural"),
                                          ("criteria.py", "python fzs.py"), ("latency.py", "python ablate.py --stages natural"),
                                          ("plot_latency.py", "python latency.py")])
def test_a_missing_input_names_the_command_for_this_results_folder(tmp_path, script, makes):
    """Run on an empty folder, each script names the command that makes its input, with --results pointing at that folder
    (followed as printed, the command must not write into results/)."""
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    p = run_in_process(script, "--results", empty)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    suggested = p.stderr[p.stderr.index(makes):]
    assert f"--results {empty}" in suggested, p.stderr
