"""Shared fixtures: tiny random models of every supported family (built from configs, no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

# Without a GPU, Triton's interpreter runs Liger's kernels on CPU (tests/mode/test_liger.py). Triton reads the
# variable when a kernel is defined and when it runs, so it is set before anything imports Triton; the
# fixture below hides it from every other test, where loss_implementation='auto' must resolve to 'chunked'.
TRITON_INTERPRETED = not torch.cuda.is_available()
if TRITON_INTERPRETED:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _triton_interpreter_for_liger_tests_only(request, monkeypatch):
    if TRITON_INTERPRETED and not request.node.path.name.startswith("test_liger"):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# Per-family extras. Logit transforms are set strong enough that a wrong head path shows up in the tests.
TINY_CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "phi3": {},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "final_logit_softcapping": 2.0, "sliding_window": 16},
    "cohere": {"logit_scale": 0.5},
    "granite": {"logits_scaling": 4.0},
    "phi": {"num_key_value_heads": 4},  # lm_head with a bias
    "gpt2": {"n_embd": 32, "n_layer": 4, "n_head": 4, "n_positions": 64},
    "gpt_neox": {"num_key_value_heads": 4},
    "opt": {"ffn_dim": 48, "word_embed_proj_dim": 16},  # project_in / project_out around the decoder
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "stablelm": {"num_key_value_heads": 4},
    "starcoder2": {},
    "olmo2": {},
    "gpt_bigcode": {"n_embd": 32, "n_layer": 4, "n_head": 4, "n_positions": 64},
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 1},
}
ARCHITECTURES = sorted(TINY_CONFIGS)


def build_tiny_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised 4-layer model of `model_type`, in eval mode, float32."""
    config = AutoConfig.for_model(model_type, **{**_COMMON, **TINY_CONFIGS[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # random init leaves some norms at exactly 1/0; perturb every parameter so copies and paths are distinguishable
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture(params=ARCHITECTURES)
def model_type(request) -> str:
    return request.param


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Two sequences, the second left-padded, with some -100 labels (prompt tokens)."""
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    ids[1, :3] = 0
    mask[1, :3] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "### Instruction:\n### Input:\n### Response:\n",
    "Mia has 5 apples. She buys 3 more. How many apples does Mia have now?",
    "Mia has 5 + 3 = 8 apples now.\nThe answer is 8.",
    "There are 12 marbles in a box. Leo takes out 4. How many marbles are left in the box?",
    "the correct answer is true. the correct answer is false.",
    "user assistant system You are a helpful assistant.",
]


def train_tokenizer_object():
    """A byte-level BPE (vocab 500) trained on the fly on a few sentences: offline and fast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 5, trainer)
    return tk


def save_tiny_model_dir(path: Path, model_type: str = "llama") -> Path:
    """A tiny random model + tokenizer saved as a normal transformers directory (what --model accepts)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer_object(), eos_token="<|endoftext|>")
    tok.pad_token = tok.eos_token
    tok.chat_template = CHAT_TEMPLATE
    model = build_tiny_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


#: what a test that needs the benchmark files tells the user when they are nowhere to be found
FETCH_HINT = "benchmark files not found: run `modetune data fetch all` (or set MODETUNE_SHARED_DATA to a data folder)"


# A tiny `modetune train` run on the embedded problem generator (tests/cli, tests/training)
TINY_TRAIN_ARGS = ["--data", "synthetic:48:1", "--cutoff-len", "96", "--batch-size", "4", "--lora-r", "4",
                   "--learning-rate", "5e-3"]  # fmt: skip


def shared_data_dir() -> Path | None:
    """`../shared/data` beside the repository (or $MODETUNE_SHARED_DATA), if present; else the cache of
    `modetune data fetch all` when it holds every pinned file; else None (tests skip with FETCH_HINT)."""
    env = os.environ.get("MODETUNE_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if path.is_dir():
        return path
    from modetune.data.fetch import DATA_FILES, data_cache_dir

    cache = data_cache_dir()
    # the files ../shared/data holds (MathQA, SIQA and WinoGrande are pinned too but no test reads them)
    needed = [f for f in DATA_FILES if f.name not in ("mathqa", "siqa", "winogrande")]
    return cache if all((cache / f.local).is_file() for f in needed) else None
