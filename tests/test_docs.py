"""The documentation runs: every ```python block of README.md and docs/*.md is executed.

Each block runs on its own in a fresh Python process (so in a fresh namespace: a block imports
what it uses, and nothing one block does, such as ``fastdrop.patch()``, reaches another), from
the repository root, with a time limit of ``BLOCK_TIMEOUT_S``. Tracebacks name the markdown
file and its line numbers.

A block that cannot run everywhere says so on its first line, visibly in the rendered page:

    # needs: cuda                  a CUDA GPU; otherwise the test is skipped with that reason
    # needs: transformers          an importable module (any name); otherwise skipped
    # run: torchrun --nproc-per-node 2
                                   run in that many processes by torch.distributed.run
                                   (standalone rendezvous, on this machine)

Skips are never silent: ``pytest -rs`` lists each with its reason.

Also checked here: README.md's length, its first lines, the file its headline figure comes
from, and that bench/results/README.md is what ``python -m bench.report --write`` makes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK_TIMEOUT_S = 300
README_MAX_LINES = 220

# TEMPORARY: blocks that use API being added now, matched by a substring of the block's code.
# Such a block is expected to fail (xfail, not strict) until the API lands; then remove its entry.

FENCE = re.compile(r"^```(\S*)")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the first code line, code) of each ```python block, in order."""
    blocks, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, i = i + 1, i + 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if m.group(1) == "python":
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


def first_comment(code: str, key: str) -> str | None:
    first = code.lstrip("\n").splitlines()[0] if code.strip() else ""
    m = re.match(rf"#\s*{key}:\s*(.+)$", first)
    return m.group(1).strip() if m else None


def missing(needs: str) -> list[str]:
    """What of a '# needs:' list this machine lacks, each with why."""
    out = []
    for want in (w.strip() for w in needs.split(",")):
        if want == "cuda":
            if not torch.cuda.is_available():
                out.append("cuda (no CUDA GPU here)")
        elif importlib.util.find_spec(want) is None:
            out.append(f"{want} (not importable here)")
    return out


CASES = [pytest.param(path, line, code, id=f"{path.relative_to(REPO)}:{line}")
         for path in DOCS for line, code in python_blocks(path)]


def test_there_are_blocks():
    assert any(p.values[0].name == "README.md" for p in CASES), "README.md has no ```python block"


@pytest.mark.parametrize("path, line, code", CASES)
def test_block_runs(path, line, code, tmp_path):
    needs = first_comment(code, "needs")
    if needs and (lacking := missing(needs)):
        pytest.skip(f"{path.relative_to(REPO)}:{line} needs {', '.join(lacking)}")
    # Blank lines first: the script's line numbers are the markdown file's.
    script = tmp_path / f"{path.name}_{line}.py"
    script.write_text("\n" * (line - 1) + code)
    cmd = [sys.executable, str(script)]
    if run := first_comment(code, "run"):
        m = re.fullmatch(r"torchrun --nproc-per-node (\d+)", run)
        assert m, f"unknown '# run:' form: {run!r}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={m.group(1)}",
               str(script)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{path.relative_to(REPO)}:{line}: still running after {BLOCK_TIMEOUT_S} s\n{e.stderr or ''}")
    if done.returncode != 0:
        pytest.fail(f"{path.relative_to(REPO)}:{line} failed (exit {done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}", pytrace=False)


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_readme_starts_with_the_setup_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2] == "```bash"
    assert lines[3].startswith("make bench") and lines[4].startswith("make test") and lines[5] == "```"


def test_readme_headline_names_a_committed_record():
    text = (REPO / "README.md").read_text()
    sources = re.findall(r"<!-- headline: from (bench/results/\S+\.csv) -->", text)
    assert sources, "README.md's headline figure has no '<!-- headline: from bench/results/<file>.csv -->'"
    for source in sources:
        assert (REPO / source).is_file(), f"README.md's headline cites {source}, which is not there"


def test_results_readme_is_generated_from_the_records():
    from bench import report
    want = report.results_readme(report.RESULTS)
    assert report.RESULTS_README.read_text() == want, (
        f"bench/results/README.md differs from its records: run `{report.WRITE_COMMAND}`")
