"""The common MoDE harness, run over every supported architecture (tiny random models, no downloads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from modetune import MoDEConfig, MoDEModel, get_mode_model
from modetune.architectures import ARCHITECTURES as TABLE
from tests.conftest import ARCHITECTURES, build_tiny_model


def reference_head(model, y: torch.Tensor) -> torch.Tensor:
    """The output path of each family, written out independently of modetune's table."""
    cfg = model.config
    if cfg.model_type == "opt" and model.model.decoder.project_out is not None:
        y = model.model.decoder.project_out(y)
    logits = model.get_output_embeddings()(y)
    if cfg.model_type == "cohere":
        logits = logits * cfg.logit_scale
    if cfg.model_type == "granite":
        logits = logits / cfg.logits_scaling
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def run_with_final_state(base, batch):
    """Base outputs with hidden states, and the final layer's normalized state (the head's input)."""
    captured = {}
    handle = None
    if base.config.model_type == "opt":  # OPT's last hidden state is already through project_out
        handle = base.model.decoder.final_layer_norm.register_forward_hook(lambda m, a, o: captured.update(x=o))
    out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    if handle:
        handle.remove()
    x = captured.get("x", out.hidden_states[-1])
    assert torch.allclose(reference_head(base, x), out.logits, atol=1e-5)  # x really is the head's input
    return out, x


def reference_loss(base, mode: MoDEModel, batch, temperature: float = 1.0) -> torch.Tensor:
    """MoDE's loss computed the plain way from `output_hidden_states`, as the method describes it."""
    cfg = mode.mode_config
    out, x = run_with_final_state(base, batch)
    hs = out.hidden_states
    layer_logits = [
        reference_head(base, mode.adapters[s].norm(hs[idx + 1])) for s, idx in enumerate(mode.layer_indices[:-1])
    ]
    layer_logits.append(out.logits)
    gates = torch.softmax(x @ mode.router.gate.weight.T + mode.router.gate.bias, dim=-1)
    ensemble = sum(gates[..., i : i + 1] * z for i, z in enumerate(layer_logits))
    labels = batch["labels"][:, 1:]
    ce = F.cross_entropy(ensemble[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100)
    valid = labels != -100
    teacher = F.log_softmax(layer_logits[-1][:, :-1][valid] / temperature, -1)
    distill = 0.0
    for z in layer_logits[:-1]:
        student = F.log_softmax(z[:, :-1][valid] / temperature, -1)
        distill = distill + (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2
    return ce + cfg.distill_weight * distill


def lora(model):
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))


def test_every_table_entry_is_tested():
    assert set(TABLE) == set(ARCHITECTURES)


def test_single_layer_reproduces_base_logits(model_type, batch):
    base = build_tiny_model(model_type)
    mode = get_mode_model(base, MoDEConfig(num_layers=1))
    with torch.no_grad():
        expected = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        last = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(last, expected[:, -1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss_implementation", ["chunked", "reference"])
def test_loss_matches_reference(model_type, batch, loss_implementation):
    base = build_tiny_model(model_type)
    cfg = MoDEConfig(num_layers=3, router_init="uniform", distill_weight=0.5, loss_implementation=loss_implementation)
    mode = get_mode_model(base, cfg).eval()
    with torch.no_grad():  # make router and adapters non-trivial so a wrong path cannot hide
        mode.router.gate.weight.normal_(0, 0.5)
        for adapter in mode.adapters:
            adapter.norm.weight.mul_(1.3)
        out = mode(**batch)
        expected = reference_loss(base, mode, batch)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    assert out.layer_ce.shape == (3,) and out.distill_loss.shape == (2,)
    torch.testing.assert_close(out.router_mean.sum(), torch.tensor(1.0))


def test_gradients_reach_exactly_mode_and_peft_weights(model_type, batch):
    mode = get_mode_model(lora(build_tiny_model(model_type)), MoDEConfig(num_layers=3)).train()
    mode(**batch).loss.backward()
    got_grad = {n for n, p in mode.named_parameters() if p.grad is not None}
    trainable = {n for n, p in mode.named_parameters() if p.requires_grad}
    assert got_grad == trainable
    assert all(("lora_" in n) or n.startswith(("adapters.", "router.")) for n in trainable)
    assert any(n.startswith("adapters.") for n in trainable) and any(n.startswith("router.") for n in trainable)
    assert any("lora_" in n for n in trainable)
    assert all(torch.isfinite(mode.get_parameter(n).grad).all() for n in got_grad)


def test_mode_only_trains_adapters_and_router(batch):
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3)).train()
    mode(**batch).loss.backward()
    assert {n for n, p in mode.named_parameters() if p.grad is not None} == {
        "adapters.0.norm.weight",
        "adapters.1.norm.weight",
        "router.gate.weight",
        "router.gate.bias",
    }


def test_save_load_gives_identical_logits(model_type, batch, tmp_path):
    mode = get_mode_model(lora(build_tiny_model(model_type)), MoDEConfig(num_layers=3, adapter="affine"))
    with torch.no_grad():
        for p in mode.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    mode.eval()
    mode.save_pretrained(tmp_path)
    restored = MoDEModel.from_pretrained(build_tiny_model(model_type), tmp_path)
    with torch.no_grad():
        a = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = restored(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "mode_config.json",
        "mode_model.safetensors",
    ]


def test_generate_with_and_without_cache_agree(model_type, batch):
    mode = get_mode_model(build_tiny_model(model_type), MoDEConfig(num_layers=3)).eval()
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 1.0)
    ids, mask = batch["input_ids"][:, :8], batch["attention_mask"][:, :8]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = mode.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
    uncached = mode.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    # decoding really follows the ensemble: the first new token is the argmax of the ensemble logits
    with torch.no_grad():
        first = mode(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
    assert torch.equal(cached[:, 8], first)


def test_topk_router_keeps_at_most_top_k(model_type, batch):
    mode = get_mode_model(build_tiny_model(model_type), MoDEConfig(num_layers=4, router="topk", top_k=2))
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 1.0)
        out = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    weights = out.router_weights
    assert ((weights > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))


@pytest.mark.parametrize(
    "model_type", [m for m in ARCHITECTURES if TABLE[m].logit_transform.__name__ != "_gemma2_softcap"]
)
def test_hidden_space_mixing_equals_logit_mixing(model_type, batch):
    mode = get_mode_model(build_tiny_model(model_type), MoDEConfig(num_layers=3))
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 1.0)
        fast = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mode.mode_config.mix_in_hidden_space = False
        slow = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert mode._located.head_is_affine()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_softcapped_head_mixes_logits(batch):
    base = build_tiny_model("gemma2")
    mode = get_mode_model(base, MoDEConfig(num_layers=3, router_init="uniform"))
    assert not mode._located.head_is_affine()
    with torch.no_grad():
        got = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        hs = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        layers = [reference_head(base, mode.adapters[s].norm(hs.hidden_states[i + 1])) for s, i in enumerate([1, 2])]
        layers.append(hs.logits)
        expected = sum(layers) / 3
        wrong = reference_head(
            base,
            (sum(mode.adapters[s].norm(hs.hidden_states[i + 1]) for s, i in enumerate([1, 2])) + hs.hidden_states[-1])
            / 3,
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-3)  # soft-capping really is non-linear here
    assert got.abs().max() <= base.config.final_logit_softcapping


@pytest.mark.parametrize("adapter", ["norm", "affine", "none"])
def test_adapters_start_as_the_final_norm(adapter, batch):
    """At initialisation every adapter equals the final norm, so a late layer's logits are its logit lens."""
    base = build_tiny_model("llama")
    mode = get_mode_model(base, MoDEConfig(num_layers=2, adapter=adapter))
    h = torch.randn(2, 5, 32)
    torch.testing.assert_close(mode.adapters[0](h, base.model.norm), base.model.norm(h), rtol=1e-6, atol=1e-6)
    trainable = sum(p.numel() for p in mode.adapters.parameters() if p.requires_grad)
    assert trainable == {"norm": 32, "affine": 32 * 32 + 32, "none": 0}[adapter]


@pytest.mark.parametrize("router_init,final_weight", [("uniform", 1 / 3), ("final", 0.9)])
def test_router_initialisation(router_init, final_weight, batch):
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, router_init=router_init))
    with torch.no_grad():
        w = mode(input_ids=batch["input_ids"]).router_weights
    torch.testing.assert_close(w[..., -1], torch.full_like(w[..., -1], final_weight))


def test_left_padding_matches_unpadded(batch):
    """A left-padded row gives the same last-position logits as the same row without padding."""
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3))
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 1.0)
        padded = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[1, -1]
        alone = mode(input_ids=batch["input_ids"][1:, 3:]).logits[0, -1]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


def test_logits_to_keep_routes_only_the_kept_positions(batch):
    """Decoding normalizes, routes and projects only the kept positions, with the same numbers."""
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, router_init="uniform")).eval()
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 0.5)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        full = mode(**inputs)
        last = mode(**inputs, logits_to_keep=1)
        picked = mode(**inputs, logits_to_keep=torch.tensor([2, 7]))
    assert last.router_weights.shape == (2, 1, 3) and full.router_weights.shape == (2, 12, 3)
    torch.testing.assert_close(last.logits, full.logits[:, -1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(last.router_weights, full.router_weights[:, -1:])
    torch.testing.assert_close(picked.logits, full.logits[:, [2, 7]], rtol=0, atol=1e-6)
