"""The pre-training recipe behind `modetune pretrain`: a vanilla transformer or MoM, from scratch.

The same run directory as `modetune train` (run.json, metrics.jsonl, training_curves.png, checkpoint-N/
marked complete only when whole, resume with the same data order, optimizer state and RNG) from the same
pieces: `MethodTrainer`'s logging, checkpoint markers and NaN guard, the run-directory helpers
(`modetune.training.run_dir`: claim, resume check, metrics cut-back), the callbacks and the curve plot. What differs is the model (a whole `PreTrainedModel`, saved as model.safetensors) and the data
(fixed-length blocks of a text corpus, `modetune.data.corpus`).

Both architectures use the SmolLM2 tokenizer and llama-family modules (RMSNorm, rotary attention, SwiGLU),
so at equal sizes they differ only in how modules are assembled. Phase 2 of the paper (`--init-from`) builds
the MoM pool from a vanilla run's (or any llama-family model's) layers.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, default_data_collator
from transformers import set_seed as hf_set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_callback import ProgressCallback as HFProgressCallback

from modetune.architectures import locate
from modetune.data.corpus import build_corpus
from modetune.errors import ConfigError
from modetune.loading import load_model_and_tokenizer, resolve_model
from modetune.method_base import help_field as _help
from modetune.mom import GatedLlamaConfig, GatedLlamaForCausalLM, MoMForCausalLM, from_pretrained_layers
from modetune.mom.config import FIELD_HELP, PRESETS, ROUTERS, WEIGHTINGS, MoMConfig
from modetune.mom.flops import vanilla_flops_per_token
from modetune.mom.gated import GATE_INIT_HELP, GATE_MODE_HELP, check_gate_init, check_gate_mode
from modetune.runs import RUN_FILE, write_run_info
from modetune.training.config import OptimConfig
from modetune.training.recipe import training_arguments
from modetune.training.run_dir import check_output, draw_training_curves, prepare_resume, record_run_end, run_directory
from modetune.training.trainer import MethodTrainer, session_callbacks, stopped_early
from modetune.version import __version__

logger = logging.getLogger(__name__)
MIXED_PRECISIONS = ("no", "bf16", "fp16")


# -- architectures -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainArch:
    """One `--arch` of `modetune pretrain`: how its model is built from the options (`build(cfg, tokenizer)`,
    called after `hf_set_seed(cfg.seed)`), and whether it reads the MoM options (`--preset`, `--init-from`)."""

    name: str
    help: str
    build: Callable[[PretrainConfig, Any], Any]
    mom: bool = False


ARCHS: dict[str, PretrainArch] = {}


def register_arch(arch: PretrainArch) -> PretrainArch:
    """Make `arch` a value of `--arch` (a name registered twice is refused)."""
    if arch.name in ARCHS:
        raise ValueError(f"pre-training architecture {arch.name!r} is already registered")
    ARCHS[arch.name] = arch
    return arch


def vanilla_config(cfg: PretrainConfig, tokenizer: Any, config_class: type = LlamaConfig, **extra: Any) -> Any:
    """A llama-style config of the requested size with the tokenizer's vocabulary and special tokens."""
    inter = cfg.intermediate_size or 64 * math.ceil(cfg.hidden_size * 8 / 3 / 64)
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=inter,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=max(cfg.block_size, 2048),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def mom_config(cfg: PretrainConfig, base: Any, num_layers: int, pool_init: str) -> Any:
    return MoMConfig(
        base_config=base.to_dict() if base is not None else None,
        num_attention_modules=cfg.num_attention_modules or num_layers,
        num_ffn_modules=cfg.num_ffn_modules or num_layers,
        num_skip_modules=cfg.num_skip_modules,
        num_rounds=cfg.num_rounds or num_layers,
        k_per_round=cfg.k_per_round,
        router=cfg.router,
        router_hidden_size=cfg.router_hidden_size,
        weighting=cfg.weighting,
        router_temperature=cfg.router_temperature,
        attention_assembly=cfg.attention_assembly,
        kv_layout=cfg.kv_layout,
        load_balance_weight=cfg.load_balance_weight,
        router_init_bias=cfg.router_init_bias,
        pool_init=pool_init,
    )


def _build_mom(cfg: PretrainConfig, tokenizer: Any) -> Any:
    """A fresh MoM pool of the size options, or (--init-from) one built from a model's layers."""
    if cfg.init_from:
        source = load_source_model(cfg.init_from)
        rows = source.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise ConfigError(
                f"--tokenizer {cfg.tokenizer} has {len(tokenizer)} tokens, more than the {rows} embedding rows of "
                f"--init-from {cfg.init_from}; pass the tokenizer of that model (--tokenizer {cfg.init_from})"
            )
        layers = len(locate(source).layers)
        return from_pretrained_layers(source, mom_config(cfg, None, layers, "layers")).train()
    return MoMForCausalLM(mom_config(cfg, vanilla_config(cfg, tokenizer), cfg.num_layers, "fresh"))


register_arch(PretrainArch("mom", "Mixture-of-Modules (options under 'MoM')", _build_mom, mom=True))
register_arch(
    PretrainArch("vanilla", "a llama-style transformer", lambda cfg, tok: LlamaForCausalLM(vanilla_config(cfg, tok)))
)
register_arch(
    PretrainArch(
        "vanilla-gated",
        "the llama-style transformer with each residual update multiplied by a per-token gate (--gate-init; "
        "--gate-mode scalar: one learnt scale per branch): the control for MoM's shrunk updates",
        lambda cfg, tok: GatedLlamaForCausalLM(
            vanilla_config(cfg, tok, GatedLlamaConfig, gate_init=cfg.gate_init, gate_mode=cfg.gate_mode)
        ),
    )
)


def _arch_help() -> str:
    return "; ".join(f"'{a.name}': {a.help}" for a in ARCHS.values()) + "."


@dataclass
class PretrainConfig(OptimConfig):
    """A pre-training run: architecture and size, corpus; output and optimisation as every recipe's
    (`OptimConfig`), with pre-training's defaults."""

    # pre-training's defaults for the shared options (the fields keep OptimConfig's place and help)
    max_steps: int = _help("Optimizer steps.", default=200)
    learning_rate: float = _help("Peak learning rate.", default=1e-3)
    lr_scheduler: str = _help("Schedule: cosine, linear, constant, ...", default="cosine")
    warmup_steps: int = _help("Linear warm-up steps.", default=10)
    weight_decay: float = _help("AdamW weight decay.", default=0.1)

    arch: str = _help("Architecture: " + _arch_help(), default="mom")
    corpus: list[str] = _help(  # noqa: RUF009
        "Text (default: shared): 'shared' (the training files of ../shared/data as plain text, 1.6 M SmolLM2 tokens), "
        "'general' (Jane Austen's novels and 98 Wikipedia articles, 1.5 M SmolLM2 tokens; run `modetune data fetch "
        "general-text` first; 'general:austen' or 'general:wikipedia' for one) and/or .txt "
        "(blank-line separated documents) or .jsonl ('text' field) files.",
        default_factory=lambda: ["shared"],
    )
    tokenizer: str = _help("Model whose tokenizer is used (see `modetune train --model`).", default="smollm2-135m")
    block_size: int = _help("Tokens per training sequence (documents are concatenated, EOS between).", default=256)
    heldout_fraction: float = _help(
        "Share of documents held out for perplexity (fixed by a hash of each document).", default=0.05
    )
    max_train_tokens: int = _help("Use at most this many training tokens (0: all).", default=0)
    data_seed: int | None = _help("Seed of the training data's order (default: --seed).", default=None)
    data_offset: int = _help(
        "Start the training data's order (that of --data-seed) this many blocks in, as if they had been trained on: "
        "a run that continues another's data, e.g. MoM phase 2 after a vanilla phase 1 of N steps x batch blocks "
        "(0: from the start).",
        default=0,
    )
    eval_max_blocks: int = _help(
        "Evaluate on at most this many held-out blocks, spread evenly over the held-out set so that every source of "
        "a mixed corpus is in it (0: all).",
        default=0,
    )
    hidden_size: int = _help("Model width d.", default=256)
    num_layers: int = _help(
        "Vanilla: decoder layers. MoM: default for the pool sizes and the rounds (equal parameters).", default=6
    )
    num_heads: int = _help("Attention heads.", default=4)
    num_kv_heads: int = _help("Key/value heads (0: = --num-heads).", default=0)
    intermediate_size: int = _help("FFN inner size (0: 8/3 d rounded up to a multiple of 64).", default=0)
    init_from: str = _help(
        "MoM phase 2: build the pool from this model's layers (a `modetune pretrain --arch vanilla` run directory, "
        "a local transformers directory or 'smollm2-135m'); its sizes replace the size options, pool sizes and rounds "
        "default to its layer count.",
        default="",
    )
    num_attention_modules: int | None = _help(
        FIELD_HELP["num_attention_modules"] + " Default: --num-layers.", default=None
    )
    num_ffn_modules: int | None = _help(FIELD_HELP["num_ffn_modules"] + " Default: --num-layers.", default=None)
    num_skip_modules: int = _help(FIELD_HELP["num_skip_modules"], default=1)
    num_rounds: int | None = _help(FIELD_HELP["num_rounds"] + " Default: --num-layers.", default=None)
    k_per_round: int = _help(FIELD_HELP["k_per_round"], default=1)
    router: str = _help(FIELD_HELP["router"], default="gru")
    router_hidden_size: int = _help(FIELD_HELP["router_hidden_size"], default=0)
    weighting: str = _help(FIELD_HELP["weighting"], default="softmax")
    router_temperature: float = _help(FIELD_HELP["router_temperature"], default=1.0)
    attention_assembly: str = _help(FIELD_HELP["attention_assembly"], default="outputs")
    kv_layout: str | None = _help(FIELD_HELP["kv_layout"], default=None)
    load_balance_weight: float = _help(FIELD_HELP["load_balance_weight"], default=0.0)
    router_init_bias: float = _help(FIELD_HELP["router_init_bias"], default=0.0)
    preset: str = _help(
        "A named set of MoM options: 'authors' = the authors' pre-training settings (K=1, GRU router state 256, "
        "router temperature 0.2, top-K renormalised weights, load balancing 0.01, Q/K/V assembly; see docs/mom.md). "
        "MoM options left at their defaults take the preset's values; options given other values keep them.",
        default="",
    )
    gate_init: float = _help(GATE_INIT_HELP, default=0.34)
    gate_mode: str = _help(GATE_MODE_HELP, default="token")
    mixed_precision: str = _help(
        "'no' (float32), 'bf16' or 'fp16': forward and backward run under autocast in that precision while the "
        "weights and the optimizer state stay float32 (transformers' mixed precision; every weight trains here).",
        default="no",
    )

    MOM_FIELDS = (
        "num_attention_modules",
        "num_ffn_modules",
        "num_skip_modules",
        "num_rounds",
        "k_per_round",
        "router",
        "router_hidden_size",
        "weighting",
        "router_temperature",
        "attention_assembly",
        "kv_layout",
        "load_balance_weight",
        "router_init_bias",
        "preset",
    )
    GATE_FIELDS = ("gate_init", "gate_mode")

    def __post_init__(self) -> None:
        """`--preset`: the MoM options still at their defaults take the preset's values (recorded resolved)."""
        if not self.preset:
            return
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset {self.preset!r} is not known; known: {', '.join(PRESETS)}")
        defaults = {f.name: f.default for f in fields(self)}
        for name, value in MoMConfig.preset(self.preset).items():
            if getattr(self, name) == defaults[name]:
                setattr(self, name, value)

    def validate(self) -> None:
        self.validate_optimization()
        if self.arch not in ARCHS:
            raise ConfigError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        mom = ARCHS[self.arch].mom
        for name, allowed in (("router", ROUTERS), ("weighting", WEIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} {getattr(self, name)!r} is not supported; allowed: {', '.join(allowed)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(
                f"--mixed-precision {self.mixed_precision!r} is not supported; allowed: {', '.join(MIXED_PRECISIONS)}"
            )
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            # accelerate has no fp16 autocast on CPU: the run would silently compute in float32
            raise ConfigError("--mixed-precision fp16 needs a CUDA GPU (on CPU it would run in float32); use bf16 here")
        if self.init_from and not mom:
            raise ConfigError("--init-from builds a MoM pool from a model's layers; it needs --arch mom")
        if self.preset and not mom:
            raise ConfigError(f"--preset sets MoM options; it needs --arch mom, got --arch {self.arch}")
        check_gate_init(self.gate_init, "--gate-init")
        check_gate_mode(self.gate_mode, "--gate-mode")
        if self.data_offset < 0:
            raise ConfigError(f"--data-offset must be >= 0 blocks, got {self.data_offset}")
        for name in ("block_size", "hidden_size", "num_layers", "num_heads", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("num_attention_modules", "num_ffn_modules", "num_rounds"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}; leave it out to use "
                    "--num-layers (or the --init-from model's layer count)"
                )
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"--hidden-size {self.hidden_size} is not divisible by --num-heads {self.num_heads}")
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ConfigError(f"--num-heads {self.num_heads} is not divisible by --num-kv-heads {self.num_kv_heads}")


# -- models --------------------------------------------------------------------------------------------
def build_model(cfg: PretrainConfig, tokenizer: Any) -> Any:
    """The model to pre-train (its registered `--arch`), initialised from `cfg.seed` (or from --init-from's layers)."""
    hf_set_seed(cfg.seed)
    return ARCHS[cfg.arch].build(cfg, tokenizer)


def load_source_model(spec: str) -> Any:
    path = Path(spec)
    if (path / RUN_FILE).is_file() and (path / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model, _ = load_model_and_tokenizer(spec, dtype="float32", device="cpu")
    return model


def parameter_counts(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    tied = head is model.get_input_embeddings().weight
    return {
        "total": total,
        "embedding": embedding,
        "non_embedding": total - embedding - (0 if tied else head.numel()),
        "router": sum(
            p.numel() for n, p in model.named_parameters() if n.startswith(("attention_router", "ffn_router"))
        ),
    }


def flops_per_token(model: Any, context: int) -> float:
    """Forward FLOPs (2 x multiply-adds) per token at `context` keys: the modules a token runs, the head."""
    if isinstance(model, MoMForCausalLM):
        return model.forward_flops_per_token(context)
    return vanilla_flops_per_token(model.config, context)


# -- the recipe ----------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    run_dir: Path
    global_step: int
    train_loss: float
    eval_loss: float | None
    perplexity: float | None
    seconds: float
    stopped: bool = False  # ended by --stop-after-step before the schedule's end: continue with --resume


def load_tokenizer(spec: str) -> Any:
    path = Path(spec)
    source = path if (path / "tokenizer_config.json").is_file() else resolve_model(spec).path
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pretrain(cfg: PretrainConfig, argv: list[str] | None = None) -> PretrainResult:
    """Run one pre-training job end to end and leave a complete run directory in `cfg.output`; a start that
    fails (bad corpus, option, model) leaves the file system as it was."""
    cfg.validate()
    started = time.time()
    out = Path(cfg.output)
    with run_directory(out) as claim:
        resume_from = check_output(out, cfg.resume, cfg.overwrite, {"pretrain_config": cfg})
        trainer, info = _setup(cfg, out, argv)
        if cfg.resume:
            prepare_resume(out, resume_from, info)
        write_run_info(out, info)
        claim.keep()
        return _run(trainer, cfg, info, out, resume_from, started)


def continued_order(n: int, data_seed: int, offset: int) -> list[int]:
    """The first epoch's order of `n` training blocks under `data_seed` (the permutation transformers' seeded
    sampler draws: `torch.randperm` from a generator seeded with it) with its first `offset` blocks moved to the
    end: read in sequence, a run starts where another of `offset` blocks in that order stopped."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed)).tolist()
    offset %= max(1, n)
    return permutation[offset:] + permutation[:offset]


EVAL_BLOCK_SELECTION = "spread"  # recorded in run.json: earlier runs evaluated on the first N held-out blocks


def evaluation_blocks(heldout: list[dict[str, list[int]]], max_blocks: int) -> list[dict[str, list[int]]]:
    """At most `max_blocks` held-out blocks, spread evenly over the held-out set (all of them when 0). The blocks
    follow the corpus's sources in order, so the first N would score only the first source of a mixed corpus."""
    if not max_blocks or max_blocks >= len(heldout):
        return list(heldout)
    return [heldout[i * len(heldout) // max_blocks] for i in range(max_blocks)]


def _setup(cfg: PretrainConfig, out: Path, argv: list[str] | None) -> tuple[MethodTrainer, dict[str, Any]]:
    """Tokenizer, corpus, model and trainer: everything that can fail on user input, before anything is written."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    model = build_model(cfg, tokenizer)  # before the corpus: a bad MoM option is refused before any tokenizing
    corpus = build_corpus(cfg.corpus, tokenizer, cfg.block_size, cfg.heldout_fraction, cfg.max_train_tokens)
    heldout = evaluation_blocks(corpus.heldout, cfg.eval_max_blocks)
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    train, order = corpus.train, {}
    if cfg.data_offset:  # the order the trainer's sampler gives, rotated, and read in sequence
        train = Subset(corpus.train, continued_order(len(corpus.train), data_seed, cfg.data_offset))
        order = {"train_sampling_strategy": "sequential"}
    info: dict[str, Any] = {
        "modetune_version": __version__,
        "kind": "pretrain",
        "status": "running",
        "started": datetime.now(timezone.utc).isoformat(),
        "command": argv if argv is not None else sys.argv,
        "pretrain_config": cfg.to_dict(),
        "model_config": model.config.to_dict(),
        "corpus": {**corpus.stats, "eval_blocks": len(heldout), "eval_block_selection": EVAL_BLOCK_SELECTION},
        "parameters": parameter_counts(model),
        "forward_flops_per_token": flops_per_token(model, context=cfg.block_size // 2),
    }
    args = training_arguments(
        cfg,
        out,
        use_cpu=not torch.cuda.is_available(),
        evaluate=True,
        bf16=cfg.mixed_precision == "bf16",
        fp16=cfg.mixed_precision == "fp16",
        data_seed=data_seed,
        **order,
    )
    trainer = MethodTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=heldout,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=session_callbacks(out, cfg.stop_after_step),
        keep_checkpoints=cfg.save_total_limit,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgressCallback)
    return trainer, info


def _run(
    trainer: MethodTrainer, cfg: PretrainConfig, info: dict[str, Any], out: Path, resume_from: Path | None,
    started: float,
) -> PretrainResult:  # fmt: skip
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stopped_early(trainer):
        record_run_end(out, info, trainer.state.global_step, started, status="stopped")
        step = trainer.state.global_step
        return PretrainResult(out, step, result.training_loss, None, None, round(time.time() - started, 1), True)
    trainer.save_model(str(out))
    eval_loss = float(trainer.evaluate()["eval_loss"])
    perplexity = math.exp(eval_loss) if eval_loss < 50 else float("inf")
    curves = draw_training_curves(out)
    record_run_end(
        out,
        info,
        trainer.state.global_step,
        started,
        tokens_seen=trainer.tokens_seen,
        train_loss=result.training_loss,
        eval_loss=eval_loss,
        heldout_perplexity=perplexity,
        training_curves=str(curves) if curves else None,
    )
    return PretrainResult(out, trainer.state.global_step, result.training_loss, eval_loss, perplexity, info["seconds"])


def config_fields() -> list[str]:
    return [f.name for f in fields(PretrainConfig)]
