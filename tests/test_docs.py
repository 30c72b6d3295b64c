"""The docs are tests: every ```bash and ```python fence of README.md, docs/*.md, BENCHMARKS.md and
REPRODUCTION.md runs here, as docs/testing.md describes (the rules are written there once; this
module implements them). Fences are collected with Sybil's Markdown lexer."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Document
from sybil.parsers.markdown import CodeBlockParser

from tests.helpers import ROOT

DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "results").rglob("README.md")),  # the published results' own commands
    ROOT / "BENCHMARKS.md",
    ROOT / "REPRODUCTION.md",
]

# The tiny budget appended to every `python train.py` command that runs (docs/testing.md).
TINY = (
    "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2 "
    "trainer.limit_test_batches=2 trainer.num_sanity_val_steps=0 data.num_workers=0 callbacks.progress_bar=null"
)
# The tiny budget of a benchmark: one measured round, no warm-up (every bench/ script takes both).
BENCH_TINY = "--repeats 1 --warmup 0"
NOT_RUN = re.compile(r"#\s*not run here:\s*(?P<reason>.+)$")
OPENERS, CLOSERS = ("for ", "while ", "if ", "until "), ("done", "fi")
SHELL = {"|", "||", "&&", ";", "&"}


def fences() -> list[tuple[Path, int, str, str]]:
    """(document, line, language, source) of every bash and python fence, in document order."""
    out = []
    for path in DOCS:
        if not path.exists():
            continue
        doc = Document.parse(str(path), CodeBlockParser("bash"), CodeBlockParser("python"))
        out += [(path, ex.line, ex.region.lexemes["arguments"], str(ex.parsed)) for ex in doc]
    return out


def commands(source: str) -> list[str]:
    """The fence's commands: continuation lines joined, a compound command (for ... done) kept whole,
    comment-only lines dropped."""
    out, current, depth = [], "", 0
    for line in source.splitlines():
        if not current and (not line.strip() or line.strip().startswith("#")):
            continue
        current += line + "\n"
        word = line.strip()
        depth += word.startswith(OPENERS) - any(word == c or word.startswith(c + " ") for c in CLOSERS)
        if not line.rstrip().endswith("\\") and depth <= 0:
            out.append(current.rstrip("\n"))
            current, depth = "", 0
    if current:
        out.append(current.rstrip("\n"))
    return out


def train_args(command: str) -> list[str] | None:
    """The arguments after `python train.py`, or None when the command is not a train.py command."""
    words = shlex.split(NOT_RUN.sub("", command.replace("\\\n", " ")), comments=True)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]  # VAR=value prefixes
    if words[:2] != ["python", "train.py"]:
        return None
    cut = next((i for i, w in enumerate(words) if w in SHELL or w.startswith((">", "2>", "<"))), len(words))
    return words[2:cut]  # up to a pipe, a list operator or a redirection


def keyset(args: list[str]) -> frozenset[str]:
    """What a command sets: the keys of its overrides (values aside, `-m` aside)."""
    return frozenset(a.split("=", 1)[0].lstrip("+~") for a in args if not a.startswith("-"))


TRAINED: set[frozenset[str]] = set()  # the key sets trained so far in this test session


def plan(source: str) -> tuple[str, list[str]]:
    """The fence as the script the test runs, and the kinds of its commands (for the report)."""
    lines, kinds = [], []
    first_train = True
    for cmd in commands(source):
        marked = NOT_RUN.search(cmd.splitlines()[-1])
        args = None if cmd.lstrip().startswith(OPENERS) else train_args(cmd)
        if marked:
            if args is not None:
                lines.append(_compose(cmd, marked=True))
                kinds.append("composed (marked)")
            elif cmd.lstrip().startswith("make "):
                lines.append("make -n " + cmd.lstrip()[5:].split("#")[0])
                kinds.append("make -n (marked)")
            else:
                lines.append(f"bash -n <<'__DOC__'\n{cmd}\n__DOC__")
                kinds.append("syntax only (marked)")
        elif args is not None and not any(a.startswith("resume=") for a in args) and "--cfg" not in args:
            keys = keyset(args)
            if first_train and keys not in TRAINED:
                TRAINED.add(keys)
                lines.append(cmd)
                kinds.append("trained (tiny)")
            else:
                lines.append(_compose(cmd))
                kinds.append("composed (variation)")
            first_train = False
        else:
            lines.append(cmd)
            kinds.append("run")
    return "\n".join(lines), kinds


def _compose(cmd: str, marked: bool = False) -> str:
    """`python train.py ARGS` -> `__compose ARGS`: the shell expands ARGS, the test composes them
    (and validates them, unless the command is marked: it may name files only its machine has)."""
    name = "__compose_marked" if marked else "__compose"
    return re.sub(r"\bpython train\.py\b", name, NOT_RUN.sub("", cmd), count=1)


PRELUDE = r"""
set -e
python() {
  case "$*" in *--cfg*) command "$LMVIT_DOC_PY" "$@"; return ;; esac  # prints a config: nothing to shrink
  case "$1" in
    train.py) command "$LMVIT_DOC_PY" "$@" $LMVIT_DOC_TINY ;;
    bench/*.py) command "$LMVIT_DOC_PY" "$@" $LMVIT_DOC_BENCH_TINY ;;
    *) command "$LMVIT_DOC_PY" "$@" ;;
  esac
}
__compose() { printf '%s\x1f' "$@" >> "$LMVIT_DOC_COMPOSE"; printf '\n' >> "$LMVIT_DOC_COMPOSE"; }
__compose_marked() { printf '%s\x1f' --marked "$@" >> "$LMVIT_DOC_COMPOSE"; printf '\n' >> "$LMVIT_DOC_COMPOSE"; }
"""


def compose_jobs(argv: list[str], check: bool = True) -> int:
    """Compose the jobs of `python train.py ARGV` as train.py would (every value of every swept key in
    at least one job) and, with ``check``, validate them as train.py does; returns the jobs composed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    import lmvit.resolvers  # noqa: F401
    from lmvit.cli import allow_null_groups
    from lmvit.config import reference_config, validate

    overrides = [a for a in allow_null_groups(["train.py", *argv])[1:] if not a.startswith("-")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        parsed = parser.parse_overrides(overrides)
        plain = [o.input_line for o in parsed if not o.is_sweep_override()]
        head = compose("train", overrides=plain, return_hydra_config=True)
        basic = head.hydra.sweeper._target_.endswith("BasicSweeper")
        params = [f"{k}={v}" for k, v in (head.hydra.sweeper.get("params") or {}).items()] if basic else []
        sweeps = [
            [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            if o.is_sweep_override()
            else [o.input_line]
            for o in parser.parse_overrides(params + overrides)
        ]
        width = max((len(s) for s in sweeps), default=1)
        jobs = [[s[i % len(s)] for s in sweeps] for i in range(width)]  # every value once, not the product
        for job in jobs:
            cfg = compose("train", overrides=job, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            choices = dict(cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
            OmegaConf.resolve(cfg)
            if check:
                validate(cfg, reference_config(list(job), choices))
    return len(jobs)


@pytest.fixture(scope="module")
def seeded_logs(tmp_path_factory, data_dir) -> Path:
    """Runs that docs read (a ViT run, a ViT sweep, an LSTM run), trained once on the tiny budget."""
    logs = tmp_path_factory.mktemp("doc_seed") / "logs"
    env = {**os.environ, "DATA_DIR": str(data_dir), "LMVIT_LOG_DIR": str(logs), "PYTHONUNBUFFERED": "1"}
    for args in (["callbacks.ema.decay=0.99"], ["-m", "optimizer=adam,sgd"], ["model=lstm", "data=wikitext2_offline"]):
        proc = subprocess.run(
            [sys.executable, "train.py", *args, *TINY.split()], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return logs


def _link_checkpoints(src: str, dst: str) -> None:
    """Checkpoints (an LSTM's are hundreds of MB) are hard-linked, other files copied. A checkpoint is
    never written in place (Lightning saves to a temporary file and renames it over the old one), so
    a fence that resumes a seeded run replaces its link and the seed stays as trained."""
    if src.endswith(".ckpt"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def workspace(tmp_path: Path, seeded: Path | None, data_dir: Path) -> tuple[Path, dict]:
    """A folder that looks like the repository (its entries linked) with its own logs/ (the seeded
    runs copied), a HOME whose datasets/ is the data, and the environment the fence runs in."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in {"logs", "report", ".git", "docs"}:
            (ws / entry.name).symlink_to(entry)
    shutil.copytree(ROOT / "docs", ws / "docs")  # a command may rewrite a committed report: a copy's
    if seeded is None:
        (ws / "logs").mkdir()
    else:
        shutil.copytree(seeded, ws / "logs", symlinks=True, copy_function=_link_checkpoints)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_dir)  # ../shared/data, as beside the repository
    home = tmp_path / "home"
    home.mkdir()
    (home / "datasets").symlink_to(data_dir)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
        "DATA_DIR": str(data_dir),
        "LMVIT_LOG_DIR": str(ws / "logs"),
        "LMVIT_DOC_PY": sys.executable,
        "LMVIT_DOC_TINY": TINY,
        "LMVIT_DOC_BENCH_TINY": BENCH_TINY,
        "LMVIT_DOC_COMPOSE": str(tmp_path / "compose.txt"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ws),
        "PYTHONUNBUFFERED": "1",
    }
    return ws, env


FENCES = fences()
IDS = [f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in FENCES]


def test_every_doc_fence_is_collected():
    """Sybil finds the fences (and each one's language): a renamed fence or a broken lexer fails here."""
    found = {p.name for p, *_ in FENCES}
    assert {"README.md", "analysis.md", "recipes.md", "findings.md"} <= found
    assert sum(lang == "python" for *_, lang, _ in FENCES) >= 3
    trains = [c for *_, lang, src in FENCES if lang == "bash" for c in commands(src) if train_args(c) is not None]
    assert len(trains) >= 40, trains


BASH = [(f, i) for f, i in zip(FENCES, IDS) if f[2] == "bash"]


@pytest.mark.parametrize(("path", "line", "lang", "source"), [f for f, _ in BASH], ids=[i for _, i in BASH])
def test_train_commands_compose(path, line, lang, source, data_dir, tmp_path, monkeypatch):
    """Every train.py command of every fence (marked ones included, every job of a sweep) composes and
    passes train.py's validation: grammar, keys, choices, values."""
    (tmp_path / "datasets").symlink_to(data_dir)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    for cmd in commands(source):
        args = None if cmd.lstrip().startswith(OPENERS) else train_args(cmd)
        marked = NOT_RUN.search(cmd.splitlines()[-1]) is not None
        if args is None or re.search(r"\$(?!HOME)", cmd) or any(a.startswith("resume=") for a in args):
            continue  # a run's own variables (a run directory, a loop's value) exist only when the fence runs
        if "--cfg" not in args:
            assert compose_jobs([os.path.expandvars(a) for a in args], check=not marked) >= 1, cmd


# BENCHMARKS.md's fences need no trained runs: they run in tests/test_docs_bench.py, a file of its own
# so that the suite's second worker (`--dist loadfile`) takes them beside these
BENCH_DOC = ROOT / "BENCHMARKS.md"
RUN_HERE = [(f, i) for f, i in zip(FENCES, IDS) if f[0] != BENCH_DOC]


def run_fence(path: Path, line: int, lang: str, source: str, logs: Path | None, data_dir: Path, tmp_path: Path):
    """The fence runs as printed (docs/testing.md): train.py on the tiny budget or composed, marked
    commands composed / dry-run / syntax-checked, python snippets executed."""
    ws, env = workspace(tmp_path, logs, data_dir)
    if lang == "python":
        cmd, kinds = [sys.executable, "-c", source], ["python"]
    else:
        script, kinds = plan(source)
        cmd = ["bash", "-c", PRELUDE + script]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{path.name}:{line} ({', '.join(kinds)}) exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    )
    compose_file = Path(env["LMVIT_DOC_COMPOSE"])
    for argv in compose_file.read_text().splitlines() if compose_file.exists() else []:
        args = [a for a in argv.split("\x1f") if a]
        marked = args[:1] == ["--marked"]
        assert compose_jobs(args[marked:], check=not marked) >= 1, argv


@pytest.mark.slow
@pytest.mark.parametrize(("path", "line", "lang", "source"), [f for f, _ in RUN_HERE], ids=[i for _, i in RUN_HERE])
def test_doc_fence_runs(path, line, lang, source, seeded_logs, data_dir, tmp_path):
    """Every fence of the docs but BENCHMARKS.md's runs as printed, beside the seeded runs."""
    run_fence(path, line, lang, source, seeded_logs, data_dir, tmp_path)


def test_eval_accepts_a_str_run_directory(tmp_path):
    """`evaluate_run("logs/...")` as the docs print it: a str is taken as a path (no TypeError before
    the run is read: a missing run is the one-line error)."""
    from eval import evaluate_run
    from lmvit.errors import UserError

    with pytest.raises((UserError, FileNotFoundError)):
        evaluate_run(str(tmp_path / "no-such-run"))


def test_a_linked_checkpoint_saved_over_keeps_the_seed(tmp_path):
    """The workspaces hard-link the seeded checkpoints: Lightning's save replaces the link (a new
    file renamed over it), so the seeded file keeps its bytes."""
    from lightning_fabric.utilities.cloud_io import _atomic_save

    seed, copy = tmp_path / "seed.ckpt", tmp_path / "copy.ckpt"
    _atomic_save({"step": 1}, seed)
    before = seed.read_bytes()
    _link_checkpoints(str(seed), str(copy))
    assert copy.stat().st_ino == seed.stat().st_ino
    _atomic_save({"step": 2, "more": list(range(100))}, copy)
    assert seed.read_bytes() == before and copy.read_bytes() != before
