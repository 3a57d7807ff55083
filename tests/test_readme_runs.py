"""The README's quick-start commands run, in the README's order, as a user types them: the same commands with
the model swapped for a tiny one and the sizes shrunk (steps, questions, problems), so that each run takes
seconds. `tests/test_docs.py` checks that every command on every page parses; this one runs the short ones.

Only the shrinking is changed: every flag the README passes is passed. `modetune data fetch` is skipped (no
network in the tests: the test files come from ../shared/data, as `modetune eval` finds them there), and so is
`modetune demo` (it is `modetune train` + `eval` on the embedded model; tests/test_real_model.py runs the
real-model path).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest

from modetune.cli import main
from tests.conftest import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("modetune data fetch", "modetune demo")


def readme_commands() -> list[str]:
    """Every `modetune ...` line of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"\s#.*$", "", line).split())
            if line.startswith("modetune ") and not line.startswith(SKIPPED):
                commands.append(line)
    return commands


def shrink(argv: list[str], model: Path, corpus: Path) -> list[str]:
    """The same command on the tiny model, with small sizes; pretraining gets a tiny architecture and corpus."""
    sizes = {"--max-steps": "2", "--limit": "2", "--num-rounds": "2"}
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in sizes:
            out += [arg, sizes[arg]]
            i += 2
            continue
        if arg == "smollm2-135m":
            arg = str(model)
        elif arg.startswith("synthetic:"):
            arg = "synthetic:16:1"
        out.append(arg)
        i += 1
    if out[0] == "pretrain":
        out += ["--tokenizer", str(model), "--corpus", str(corpus), "--hidden-size", "32", "--num-heads", "2",
                "--block-size", "16", "--eval-max-blocks", "2"]  # fmt: skip
        if "--init-from" not in out:
            out += ["--num-layers", "2"]
    if "mod" in out and out[out.index("mod") - 1] == "--method":  # the tiny model has 4 layers: route 1 and 2
        out += ["--skip-first", "1", "--skip-last", "1"]
    if out[0] in ("train", "eval", "inspect"):
        out += {"train": ["--cutoff-len", "64", "--batch-size", "2", "--save-steps", "0"],
                "eval": ["--max-new-tokens", "2", "--no-progress"], "inspect": ["--batch-size", "2"]}[out[0]]  # fmt: skip
    if out[0] == "eval" and "--limit" not in out:
        out += ["--limit", "2"]
    return out


def test_the_readme_quick_start_runs(tmp_path, tiny_model_dir, monkeypatch, capsys):
    data = shared_data_dir()
    if data is None:
        pytest.skip("../shared/data not found (set MODETUNE_SHARED_DATA or run `modetune data fetch all`)")
    monkeypatch.chdir(tmp_path)  # runs/... as in the README, relative to where the user stands
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(data))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"story {i}: a cat sat on a mat and slept." for i in range(300)))
    # the file a user brings to `modetune train --method mod --data train.jsonl`
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{i} + 1 =", "completion": f" {i + 1}"}) + "\n" for i in range(16))
    )
    commands = readme_commands()
    assert {c.split()[1] for c in commands} >= {"train", "eval", "compare", "inspect", "pretrain"}
    for command in commands:
        argv = shrink(shlex.split(command)[1:], tiny_model_dir, corpus)
        started = time.time()
        code = main(argv)
        print(f"{time.time() - started:6.1f} s  {command}")
        assert code == 0, f"{command}\n-> {shlex.join(argv)}\n{capsys.readouterr().err[-2000:]}"
    assert (tmp_path / "runs" / "mode" / "run.json").is_file() and (tmp_path / "runs" / "mom" / "run.json").is_file()
