"""The checks every causal-LM type must pass once wrapped (the sweep test and the coverage script use them).

Each check first runs the same operation on the base model alone: what the base model itself cannot do in
its tiny form (e.g. generate with an attention mask, train without an in-place error) is not MoDE's to test,
and is reported as such.
"""

from __future__ import annotations

import torch

from modetune import MoDEConfig, get_mode_model
from modetune.architectures import dummy_inputs, locate


class BaseModelCannot(Exception):
    """The base model alone fails the operation, so the check does not apply."""


def mode_config(model, k: int) -> MoDEConfig:
    """Defaults, except an affine adapter where the model has no final norm to copy."""
    return MoDEConfig(num_layers=k, adapter="norm" if locate(model).final_norm is not None else "affine")


def identity_difference(model) -> float:
    """num_layers=1: MoDE's logits against the base model's own (max abs difference)."""
    batch = dummy_inputs(model)
    with torch.no_grad():
        base = model(**batch, use_cache=False).logits
        ours = get_mode_model(model, mode_config(model, 1))(**batch, use_cache=False).logits
    return (ours.float() - base.float()).abs().max().item()


def gradient_report(model) -> dict[str, set[str]]:
    """k=2 over LoRA: which parameters got a gradient. MoDE's must all get one, and nothing frozen may."""
    from peft import LoraConfig, get_peft_model

    batch = dummy_inputs(model)
    labels = batch["input_ids"].clone()
    for p in model.parameters():  # an earlier MoDE-only wrap froze them
        p.requires_grad_(True)
    try:
        model.train()
        model(**batch, labels=labels, use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)
    except Exception as exc:
        raise BaseModelCannot(f"backward of the base model's own loss fails: {type(exc).__name__}: {exc}") from None
    lora = LoraConfig(r=2, target_modules=lora_targets(model), lora_dropout=0.0, init_lora_weights=False)
    peft = get_peft_model(model, lora)
    mode = get_mode_model(peft, mode_config(model, 2))
    mode.train()
    mode(**batch, labels=labels, use_cache=False).loss.backward()
    got = {n for n, p in mode.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in mode.named_parameters() if p.requires_grad}
    mode_params = {n for n in trainable if n.startswith(("adapters.", "router."))}
    return {"got": got, "trainable": trainable, "mode": mode_params, "lora": trainable - mode_params}


def lora_targets(model) -> list[str] | str:
    """The linear layers inside attention modules but gates (PEFT's 'all-linear' also hits MoE routers, fused
    gate projections and Mamba's out_proj, which PEFT refuses or breaks on); else every other linear layer."""
    attention = [
        name
        for parent_name, parent in model.named_modules()
        if "attention" in type(parent).__name__.lower()
        for child, module in parent.named_children()
        if isinstance(module, torch.nn.Linear) and "gate" not in child and (name := f"{parent_name}.{child}")
    ]
    linear = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return attention or sorted(linear - {"lm_head", "out_proj"}) or "all-linear"


def gradients_ok(report: dict[str, set[str]]) -> bool:
    return report["mode"] <= report["got"] <= report["trainable"] and bool(report["got"] & report["lora"])


def cached_equals_uncached(model, new_tokens: int = 4) -> bool:
    batch = dummy_inputs(model)
    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    try:
        with torch.no_grad():
            base_cached = model.generate(**batch, use_cache=True, **kw)
            base_uncached = model.generate(**batch, use_cache=False, **kw)
    except Exception as exc:
        raise BaseModelCannot(f"the base model's own generate fails: {type(exc).__name__}: {exc}") from None
    if not torch.equal(base_cached, base_uncached):
        raise BaseModelCannot("the base model's own cached and uncached greedy generations differ")
    mode = get_mode_model(model, mode_config(model, 2)).eval()
    return torch.equal(mode.generate(**batch, use_cache=True, **kw), mode.generate(**batch, use_cache=False, **kw))
