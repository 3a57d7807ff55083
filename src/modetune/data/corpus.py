"""A small offline pre-training corpus: plain-text documents, a fixed held-out split, fixed-length blocks.

`modetune pretrain` needs running text and this machine has no network besides package registries. The
default corpus is made from the *training* files in ../shared/data (never their test files): GSM8K worked
solutions, BoolQ questions with their answers, ARC-Easy/ARC-Challenge/OpenBookQA questions with the correct
choice written out. That is about 2 M SmolLM2 tokens of short, school-level English and arithmetic: enough
to compare architectures at small scale, not a web corpus. ``general`` is running English prose instead:
Jane Austen's novels and 98 Wikipedia articles (`modetune.data.general_text`, fetched once with ``modetune
data fetch general-text``; ``general:austen`` or ``general:wikipedia`` for one of them). Other text can be
given as .txt files (one document per blank-line-separated paragraph block) or .jsonl files with a "text"
field.

The held-out split is by document and fixed: a document is held out when the first byte of the SHA-1 of
its text falls below `heldout_fraction * 256`, so it never depends on the seed, the file order or the
tokenizer, and no document is split across train and held-out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modetune.data.general_text import PARTS as GENERAL_PARTS
from modetune.data.general_text import general_text_documents
from modetune.errors import DataError

SHARED_CORPUS = "shared"
GENERAL_CORPUS = "general"
_CHOICE = re.compile(r"Answer(\d+):\s*(.*?)(?=\s*Answer\d+:|\n\nAnswer format|\Z)", re.S)
_CALC = re.compile(r"<<[^>]*>>")


def shared_data_dir() -> Path:
    """../shared/data beside the repository (or $MODETUNE_SHARED_DATA)."""
    env = os.environ.get("MODETUNE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _question(instruction: str) -> str:
    text = instruction.split("question:", 1)[-1].split("\n\nAnswer", 1)[0].strip()
    return text[:1].upper() + text[1:]


def shared_documents(root: Path | None = None) -> list[tuple[str, str]]:
    """(source, text) documents from the training files of ../shared/data."""
    root = root or shared_data_dir()
    docs: list[tuple[str, str]] = []
    gsm = root / "gsm8k_openai" / "train.jsonl"
    boolq = root / "boolq" / "train.json"
    mc = [root / name / "train.json" for name in ("arc_easy", "arc_challenge", "openbookqa")]
    missing = [p for p in (gsm, boolq, *mc) if not p.is_file()]
    if missing:
        raise DataError(
            f"the shared corpus needs {', '.join(map(str, missing))}; set MODETUNE_SHARED_DATA to the shared data "
            "directory or pass --corpus FILE"
        )
    for line in gsm.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            answer = _CALC.sub("", rec["answer"]).replace("#### ", "The answer is ")
            docs.append(("gsm8k", f"{rec['question'].strip()}\n{answer.strip()}."))
    for rec in json.loads(boolq.read_text()):
        q = _question(rec["instruction"]).rstrip("?")
        docs.append(("boolq", f"Question: {q}? Answer: {'yes' if rec['answer'] == 'true' else 'no'}."))
    for path in mc:
        for rec in json.loads(path.read_text()):
            instruction = rec["instruction"]
            q = instruction.split("question:", 1)[-1].split("\n\nAnswer1:", 1)[0].strip()
            choices = {int(n): t.strip() for n, t in _CHOICE.findall(instruction)}
            n = int(str(rec["answer"]).replace("answer", "") or 0)
            if n in choices:
                docs.append((path.parent.name, f"Question: {q}\nAnswer: {choices[n]}."))
    return docs


def general_documents(spec: str) -> list[tuple[str, str]]:
    """(source, text) documents of ``general`` (both parts) or ``general:austen`` / ``general:wikipedia``."""
    names = [part.name for part in GENERAL_PARTS]
    which = spec.partition(":")[2]
    if which and which not in names:
        allowed = ", ".join([GENERAL_CORPUS, *(f"{GENERAL_CORPUS}:{n}" for n in names)])
        raise DataError(f"--corpus {spec}: unknown part '{which}'; allowed: {allowed}")
    return [(name, text) for name in ([which] if which else names) for _, text in general_text_documents(name)]


def corpus_documents(spec: str) -> list[tuple[str, str]]:
    """The documents one ``--corpus`` value names: ``shared``, ``general[:PART]`` or a file."""
    if spec == SHARED_CORPUS:
        return shared_documents()
    if spec == GENERAL_CORPUS or spec.startswith(f"{GENERAL_CORPUS}:"):
        return general_documents(spec)
    return file_documents(Path(spec))


def file_documents(path: Path) -> list[tuple[str, str]]:
    """Documents of a .txt (blank-line separated) or .jsonl ("text" field) file."""
    if not path.is_file():
        raise DataError(f"corpus file {path} does not exist")
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append((path.name, str(json.loads(line)["text"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{i}: expected a JSON object with a 'text' field") from None
        return docs
    return [(path.name, block.strip()) for block in re.split(r"\n\s*\n", path.read_text()) if block.strip()]


def is_heldout(text: str, fraction: float) -> bool:
    return hashlib.sha1(text.encode()).digest()[0] < fraction * 256


@dataclass
class Corpus:
    """Tokenised blocks of the train and held-out splits, with their document and token counts."""

    train: list[dict[str, list[int]]]
    heldout: list[dict[str, list[int]]]
    stats: dict[str, Any]


def build_corpus(
    specs: list[str], tokenizer: Any, block_size: int, heldout_fraction: float = 0.05, max_tokens: int = 0
) -> Corpus:
    """Documents -> token stream (EOS between documents) -> blocks of `block_size` tokens, per split."""
    if block_size < 2:
        raise DataError(f"--block-size must be >= 2, got {block_size}")
    if not 0 < heldout_fraction < 1:
        raise DataError(f"--heldout-fraction must be in (0, 1), got {heldout_fraction}")
    docs: list[tuple[str, str]] = []
    for spec in specs:
        docs += corpus_documents(spec)
    if not docs:
        raise DataError("the corpus is empty")
    eos = tokenizer.eos_token_id
    streams: dict[str, list[int]] = {"train": [], "heldout": []}
    counts = {"train": {"documents": 0, "tokens": 0}, "heldout": {"documents": 0, "tokens": 0}}
    per_source: dict[str, int] = {}
    texts = [t for _, t in docs]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for (source, text), ids in zip(docs, encoded, strict=True):
        split = "heldout" if is_heldout(text, heldout_fraction) else "train"
        ids = [*ids, eos]
        streams[split] += ids
        counts[split]["documents"] += 1
        counts[split]["tokens"] += len(ids)
        per_source[source] = per_source.get(source, 0) + len(ids)
    blocks = {}
    for split, stream in streams.items():
        if split == "train" and max_tokens:
            stream = stream[:max_tokens]
        n = len(stream) // block_size
        blocks[split] = [
            {
                "input_ids": stream[i * block_size : (i + 1) * block_size],
                "labels": stream[i * block_size : (i + 1) * block_size],
            }
            for i in range(n)
        ]
        if not blocks[split]:
            raise DataError(f"the {split} split has fewer than {block_size} tokens; lower --block-size or add text")
    stats = {
        "sources": specs,
        "block_size": block_size,
        "heldout_fraction": heldout_fraction,
        "split": counts,
        "tokens_per_source": per_source,
        "train_blocks": len(blocks["train"]),
        "heldout_blocks": len(blocks["heldout"]),
    }
    return Corpus(blocks["train"], blocks["heldout"], stats)
