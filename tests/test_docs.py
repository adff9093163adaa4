"""The documentation stays runnable: every `diffsuite ...` line in a fenced code block of README.md and docs/*.md
parses with the real command-line parser, every `python benchmarks/X.py` line names a script that exists, and every
relative link (file and #anchor) in the README and the docs points at something that exists."""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from diffsuite.recipes import cli
from diffsuite.recipes.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOC_NAMES = ["core", "image", "audio", "music", "trajectory", "benchmarks"]
DOCS = [ROOT / "README.md"] + [ROOT / "docs" / f"{n}.md" for n in DOC_NAMES]
FENCE = re.compile(r"^\s*(```|~~~)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, logical line) for every line inside a fenced code block; `\\` continuations are joined."""
    out, in_fence, pending, start = [], False, "", 0
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence, pending = not in_fence, ""
            continue
        if not in_fence:
            continue
        if not pending:
            start = no
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def command_argv(line: str) -> tuple[str, list[str]] | None:
    """Classify a code line: ('diffsuite', argv) for the CLI (also via accelerate / python -m), ('benchmark', [path])
    for `python benchmarks/X.py ...`, or None for anything else. Raises ValueError on a line shlex cannot split."""
    s = line.strip()
    if s.startswith("$ "):
        s = s[2:].strip()
    tokens = shlex.split(s, comments=True)
    while tokens and (ENV_ASSIGNMENT.match(tokens[0]) or tokens[0] == "time"):
        tokens.pop(0)
    if not tokens:
        return None
    if tokens[0] == "diffsuite":
        return "diffsuite", tokens[1:]
    if "diffsuite.recipes.cli" in tokens and tokens[0] in ("accelerate", "python", "python3", "torchrun"):
        return "diffsuite", tokens[tokens.index("diffsuite.recipes.cli") + 1:]
    if tokens[0] in ("python", "python3") and len(tokens) > 1 and tokens[1].startswith("benchmarks/"):
        return "benchmark", [tokens[1]]
    return None


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def cli_error(parser, argv: list[str]) -> str | None:
    """Why argv is not a valid `diffsuite` command line (the rule of diffsuite.recipes.cli.main), or None."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args(argv)
    except SystemExit as e:
        if e.code == 0:  # --help
            return None
        lines = err.getvalue().strip().splitlines()
        return lines[-1] if lines else f"argparse exited with {e.code}"
    return cli.override_error(args, extra)


def test_the_documents_exist():
    missing = [str(p.relative_to(ROOT)) for p in DOCS if not p.is_file()]
    assert not missing, f"missing documents: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_command_lines_parse(doc: Path, parser):
    if not doc.is_file():
        pytest.fail(f"{doc.relative_to(ROOT)} does not exist")
    bad, n_cli = [], 0
    for no, line in code_lines(doc):
        where = f"{doc.relative_to(ROOT)}:{no}: {line.strip()}"
        try:
            found = command_argv(line)
        except ValueError as e:
            if line.strip().startswith(("diffsuite", "$ diffsuite", "python benchmarks/")):
                bad.append(f"{where}\n    cannot split the line: {e}")
            continue
        if found is None:
            continue
        kind, argv = found
        if kind == "benchmark":
            if not (ROOT / argv[0]).is_file():
                bad.append(f"{where}\n    {argv[0]} does not exist")
            continue
        n_cli += 1
        why = cli_error(parser, argv)
        if why:
            bad.append(f"{where}\n    {why}")
    assert not bad, f"{len(bad)} command line(s) in the docs do not parse:\n" + "\n".join(bad)
    if doc.name == "README.md":
        assert n_cli >= 10, f"README.md: only {n_cli} diffsuite command lines found in code blocks"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_with_code(path):
        m = HEADING.match(line)
        if not m:
            continue
        s = slug(m.group(2))
        k = seen.get(s, 0)
        out.add(s if k == 0 else f"{s}-{k}")
        seen[s] = k + 1
    return out


def prose_with_code(path: Path) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, inline code kept (headings keep their code text in anchors)."""
    out, in_fence = [], False
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append((no, line))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image outside code (inline code spans are blanked first)."""
    out = []
    for no, line in prose_with_code(path):
        line = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)
        out += [(no, m.group(1)) for m in LINK.finditer(line)]
    return out


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_relative_links_resolve(doc: Path):
    if not doc.is_file():
        pytest.fail(f"{doc.relative_to(ROOT)} does not exist")
    bad = []
    for no, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        where = f"{doc.relative_to(ROOT)}:{no}: ({target})"
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            bad.append(f"{where}\n    {path_part} does not exist")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            bad.append(f"{where}\n    points outside the repository")
            continue
        if anchor and dest.suffix == ".md":
            valid = anchors(dest)
            if anchor not in valid:
                bad.append(f"{where}\n    no heading with anchor #{anchor} in {dest.relative_to(ROOT)}; "
                           f"anchors there: {sorted(valid)}")
    assert not bad, f"{len(bad)} broken link(s):\n" + "\n".join(bad)


def test_slug_follows_github():
    assert slug("DPM-Solver++ timestep spacing") == "dpm-solver-timestep-spacing"
    assert slug("`benchmarks/image.py`") == "benchmarksimagepy"
    assert slug("Precision (fp32 vs bf16)") == "precision-fp32-vs-bf16"
    assert slug("The trainer: many processes, GPUs and nodes") == "the-trainer-many-processes-gpus-and-nodes"
    assert slug("U-Maze") == "u-maze"


def test_code_lines_join_continuations(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n```bash\n$ diffsuite train toy2d \\\n    --out runs/t  # a comment\nls\n```\n"
                  "diffsuite not-in-a-fence\n")
    lines = code_lines(md)
    assert lines[0][0] == 3 and command_argv(lines[0][1]) == ("diffsuite", ["train", "toy2d", "--out", "runs/t"])
    assert command_argv(lines[1][1]) is None and len(lines) == 2


def test_bad_command_lines_are_caught(parser):
    assert cli_error(parser, ["train", "toy2d", "train.steps=3", "--out", "runs/t"]) is None
    assert cli_error(parser, ["sample", "runs/t", "--no-such-option"])
    assert cli_error(parser, ["sample", "runs/t", "train.steps=3"])  # sample takes no overrides
    assert cli_error(parser, ["no-such-command"])
    assert cli_error(parser, ["train", "--help"]) is None


def test_the_new_modality_guide_is_under_100_lines():
    """README and docs/core.md promise a whole modality (toy2d) in under 100 lines."""
    assert len((ROOT / "recipes" / "toy2d.py").read_text().splitlines()) < 100
