"""MoM model: exact reduction to the source transformer, gradients, cache, save/load, PEFT."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from modetune.errors import ConfigError, UnsupportedArchitectureError
from modetune.mom import MoMCache, MoMConfig, MoMForCausalLM, from_pretrained_layers
from tests.conftest import VOCAB, build_tiny_model

FAMILIES = ["llama", "qwen2", "mistral", "qwen3"]
FULL = dict(num_attention_modules=4, num_ffn_modules=4, num_rounds=4)  # the tiny models have 4 layers


def routed(model_type: str = "llama", **overrides) -> MoMForCausalLM:
    """A MoM built from a tiny model's layers with live routers (K=2 of 4 modules + 1 SKIP, 5 rounds)."""
    torch.manual_seed(0)
    values = dict(num_attention_modules=4, num_ffn_modules=4, num_rounds=5, k_per_round=2, num_skip_modules=1)
    mom = from_pretrained_layers(build_tiny_model(model_type), MoMConfig(**{**values, **overrides}))
    with torch.no_grad():  # random routers pick differently per token (the point of the cache tests)
        for p in (*mom.attention_router.parameters(), *mom.ffn_router.parameters()):
            p.normal_(0, 0.5)
    return mom.eval()


@pytest.mark.parametrize("assembly", ["outputs", "qkv"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_fixed_routes_reproduce_the_source_model_exactly(model_type, impl, assembly, batch):
    base = build_tiny_model(model_type)
    base.set_attn_implementation(impl)
    mom = from_pretrained_layers(base, MoMConfig(**FULL, attention_assembly=assembly)).fix_routes_to_layers()
    ids = batch["input_ids"][:1]
    with torch.no_grad():
        assert torch.equal(base(ids).logits, mom(ids).logits)
        # also with padding and through the cache, one token at a time
        full = base(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        mine = mom(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(mine[real], full[real], rtol=1e-5, atol=1e-5)


def test_fixed_routes_generation_matches_the_source_model():
    base = build_tiny_model("llama")
    mom = from_pretrained_layers(base).fix_routes_to_layers()
    ids = torch.randint(3, VOCAB, (2, 6))
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(base.generate(ids, **kw), mom.generate(ids, **kw))


@pytest.mark.parametrize("assembly", ["outputs", "qkv"])
def test_routers_get_gradients_and_the_loss_is_a_causal_lm_loss(assembly, batch):
    mom = routed(attention_assembly=assembly).train()
    out = mom(**batch)
    out.loss.backward()
    for router in (mom.attention_router, mom.ffn_router):
        grads = [p.grad for p in router.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # labels shifted, -100 ignored, num_items_in_batch divides the summed loss
    logits = out.logits.detach()
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss.detach(), ref)
    n = int((batch["labels"][:, 1:] != -100).sum())
    summed = mom(**batch, num_items_in_batch=torch.tensor(2 * n)).loss.detach()
    torch.testing.assert_close(summed, ref / 2, rtol=1e-4, atol=1e-5)
    assert out.attention_load.shape == (5,) and abs(float(out.attention_load.sum()) - 1) < 1e-5
    assert out.router_entropy > 0


@pytest.mark.parametrize(
    "router,weighting,assembly",
    [("gru", "softmax", "outputs"), ("linear", "topk_softmax", "outputs"), ("gru", "topk_softmax", "qkv"),
     ("linear", "softmax", "qkv")],
)  # fmt: skip
def test_cached_and_uncached_agree(router, weighting, assembly, batch):
    mom = routed("qwen2", router=router, weighting=weighting, attention_assembly=assembly)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = mom(ids, attention_mask=mask, use_cache=False, output_routes=True)
        # the routes really differ between tokens, modules and rounds (else the cache test proves little)
        picks = torch.stack([a for a, _ in full.routes])
        assert picks.unique().numel() >= 4
        # prefill 7 tokens, then one token at a time through the MoMCache
        out = mom(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        cache = out.cache
        assert isinstance(cache, MoMCache)
        steps = [out.logits]
        for t in range(7, ids.shape[1]):
            out = mom(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full.logits[real], rtol=1e-4, atol=1e-5)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(mom.generate(ids, **kw), mom.generate(ids, use_cache=False, **kw))
    beams = dict(kw, num_beams=3, num_return_sequences=2)
    assert torch.equal(mom.generate(ids, **beams), mom.generate(ids, use_cache=False, **beams))


def test_fixed_route_cache_holds_only_the_used_slots():
    mom = from_pretrained_layers(build_tiny_model("llama"), MoMConfig(num_rounds=3, num_attention_modules=4,
                                 num_ffn_modules=4, kv_layout="slots")).fix_routes_to_layers()  # fmt: skip
    with torch.no_grad():
        cache = mom(torch.randint(3, VOCAB, (1, 5)), use_cache=True).cache
    used = {i for i, layer in enumerate(cache.layers) if layer.get_seq_length() > 0}
    assert used == {cache.kv_slot(h, h) for h in range(3)} | {12 + cache.kv_slot(h, h) for h in range(3)}
    assert cache.get_seq_length() == 5


def test_save_and_load_identical(tmp_path, batch):
    mom = routed("llama", router_init_bias=0.7)
    mom.prune_modules(attention=[3])
    mom.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, MoMForCausalLM)
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == mom.config.to_dict()
    with torch.no_grad():
        a, b = mom(**batch).logits, loaded.eval()(**batch).logits
    assert torch.equal(a, b)
    assert MoMConfig.from_dict(mom.config.to_dict()).to_dict() == mom.config.to_dict()


def test_pruned_modules_are_never_picked(batch):
    mom = routed().prune_modules(attention=[0, 1], ffn=[2])
    with torch.no_grad():
        out = mom(**batch, output_routes=True)
    for picks_a, picks_f in out.routes:
        assert not torch.isin(picks_a, torch.tensor([0, 1])).any()
        assert not (picks_f == 2).any()


def test_lora_on_mom_linear_modules(batch):
    from peft import LoraConfig, get_peft_model

    mom = routed()
    peft_model = get_peft_model(mom, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("attention_modules.0.self_attn.q_proj.lora_A" in n for n in names)
    assert any("ffn_modules.3.mlp.down_proj.lora_B" in n for n in names)
    peft_model.train()
    peft_model(**batch).loss.backward()


def test_fresh_pool_and_validation():
    cfg = MoMConfig(
        base_config={
            "model_type": "llama",
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 1,
        },
        num_attention_modules=3,
        num_ffn_modules=2,
        num_rounds=4,
        k_per_round=2,
    )
    model = MoMForCausalLM(cfg)
    assert model(torch.randint(0, VOCAB, (1, 5))).logits.shape == (1, 5, VOCAB)
    with pytest.raises(ConfigError, match="k_per_round"):
        MoMConfig(num_attention_modules=1, num_skip_modules=0, k_per_round=2)
    with pytest.raises(ConfigError, match="router"):
        MoMConfig(router="lstm")
    with pytest.raises(ConfigError, match="fixed_routes"):
        MoMConfig(num_rounds=5, num_attention_modules=4, fixed_routes=True)
    with pytest.raises(ConfigError, match="gpt2"):
        MoMConfig(base_config={"model_type": "gpt2"})
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        from_pretrained_layers(build_tiny_model("gpt2"))


def test_plain_transformers_trainer_trains_mom(tmp_path):
    from transformers import Trainer, TrainingArguments, default_data_collator

    mom = routed().train()
    before = {n: p.detach().clone() for n, p in mom.named_parameters()}
    torch.manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(3, VOCAB, (12,)).tolist()), "labels": ids} for _ in range(8)]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", disable_tqdm=True, learning_rate=1e-2,
    )  # fmt: skip
    result = Trainer(model=mom, args=args, train_dataset=data, data_collator=default_data_collator).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = {n for n, p in mom.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("attention_router") for n in changed) and any("ffn_modules" in n for n in changed)


def test_fixed_route_flops_equal_the_vanilla_count():
    from modetune.training.pretrain import flops_per_token

    base = build_tiny_model("llama")
    mom = from_pretrained_layers(base).fix_routes_to_layers()
    assert flops_per_token(mom, 16) == flops_per_token(base, 16)
    routed_k2 = from_pretrained_layers(base, MoMConfig(num_rounds=4, k_per_round=2))
    assert flops_per_token(routed_k2, 16) > 2 * flops_per_token(base, 16) - 2 * 2 * 32 * VOCAB


def test_load_balance_loss_is_added_in_training_and_trains_the_routers(batch):
    plain = routed().train()
    balanced = routed(load_balance_weight=0.5).train()
    a, b = plain(**batch), balanced(**batch)
    assert float(b.loss) > float(a.loss)  # the same model plus a positive balance term
    plain.zero_grad()
    (b.loss - a.loss.detach()).backward()
    assert balanced.attention_router.proj.weight.grad.abs().sum() > 0
    # evaluated, the loss is the plain cross-entropy (a held-out loss comparable with a model without routers)
    with torch.no_grad():
        assert float(balanced.eval()(**batch).loss) == pytest.approx(float(plain.eval()(**batch).loss), abs=1e-6)
