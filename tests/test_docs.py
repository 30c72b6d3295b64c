"""Every ``python train.py`` command the docs print composes as written.

The ```bash fences of README.md, REPRODUCTION.md, BENCHMARKS.md and docs/*.md are read with the
Markdown parser the docs are rendered with (markdown-it-py); each train.py command (continuation
lines joined, environment prefixes and comments dropped) is composed with Hydra's compose API from
its exact overrides: a typo in a key, a group option that does not exist or a command Hydra's
grammar refuses fails here. A sweep is composed at the first value of each swept key
(``glob(...)``: the first matching option). Commands marked ``# not run here: <reason>`` are
composed too. What runs for real is covered by the subject's own tests (training, resume, sweeps).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from markdown_it import MarkdownIt

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", ROOT / "REPRODUCTION.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"|", "||", "&&", ";", "&"}  # the command ends there (a redirection too)
FLAGS = {"-m", "--multirun", "--cfg", "job", "hydra", "all", "--resolve", "--help", "-h", "--info"}


def commands(path: Path) -> list[tuple[str, str]]:
    """(where, command) for each train.py command in the file's bash fences."""
    found = []
    for token in MarkdownIt().parse(path.read_text()):
        if token.type != "fence" or token.info.strip() not in ("bash", "sh", "shell"):
            continue
        text = re.sub(r"\\\n\s*", " ", token.content)
        loop = dict(re.findall(r"for (\w+) in (\S+)", text))  # for opt in a b c: $opt -> a
        for i, line in enumerate(text.splitlines()):
            for var, value in loop.items():
                line = line.replace(f"${var}", value)
            words = shlex.split(line, comments=True)
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                words = words[1:]
            cut = next((j for j, w in enumerate(words) if w in SHELL or w.startswith((">", "2>"))), len(words))
            words = words[:cut]
            if len(words) >= 2 and words[0].endswith("python") and words[1] == "train.py":
                line_no = token.map[0] + 2 + i if token.map else 0
                found.append((f"{path.relative_to(ROOT)}:{line_no}", " ".join(shlex.quote(w) for w in words[2:])))
    return found


ALL = [c for path in DOCS if path.is_file() for c in commands(path)]


def first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    job = []
    for text, override in zip(overrides, parsed):
        if not override.is_sweep_override():
            job.append(text)
            continue
        key = override.get_key_element()
        value = override.value()
        if type(value).__name__ == "Glob":
            options = sorted(p.stem for p in (ROOT / "conf" / key).glob("*.yaml"))
            first = next(o for o in options if any(fnmatch.fnmatch(o, g) for g in value.include))
        else:
            first = next(iter(override.sweep_string_iterator()))
        job.append(f"{key}={first}")
    return job


@pytest.fixture(scope="module")
def hydra_ready():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_the_docs_print_train_commands():
    assert len(ALL) >= 40, ALL  # the collector finds them (README and docs/)


@pytest.mark.parametrize("where,command", ALL, ids=[w for w, _ in ALL])
def test_every_train_command_in_the_docs_composes(hydra_ready, where, command):
    from lmvit.cli import allow_null_groups

    words = [w for w in shlex.split(command) if w not in FLAGS]
    words = allow_null_groups(["train.py", *words])[1:]  # logger=null -> ~logger, as train.py does
    cfg = compose(config_name="train", overrides=first_job(words), return_hydra_config=True)
    assert cfg.task in ("vit", "lstm"), where
