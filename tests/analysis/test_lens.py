"""The inspect numbers on a tiny model against a direct computation (output_hidden_states + norm + head)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from modetune import MoDEConfig, get_mode_model
from modetune.analysis.lens import example_batches, inspect_batches, prompt_batches, token_class
from modetune.data import generate_problems
from tests.conftest import build_tiny_model


@pytest.fixture
def tiny(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return base, tokenizer


def _perturbed_mode(base, **cfg):
    mode = get_mode_model(base, MoDEConfig(num_layers=3, **cfg))
    torch.manual_seed(3)
    with torch.no_grad():  # make the adapters differ from the final norm and the router non-trivial
        for p in mode.adapters.parameters():
            p.mul_(torch.randn_like(p) * 20)
        for p in mode.router.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return mode


@torch.no_grad()
def _direct(base, mode, batches):
    """Every number recomputed from HF's output_hidden_states: hs[l + 1] is layer l's output (pre-norm) for
    l < L - 1, hs[-1] the final normalized state; the final layer's lens is the model's own logits."""
    sums: dict[str, torch.Tensor] = {}
    n = 0
    num_layers = base.config.num_hidden_layers
    late = list(range(num_layers - 3, num_layers))
    for batch in batches:
        out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        hs = out.hidden_states
        lens = [base.lm_head(base.model.norm(hs[i + 1])) for i in range(num_layers - 1)] + [out.logits]
        adapted = [base.lm_head(mode.adapters[j].norm(hs[late[j] + 1])) for j in range(2)] + [out.logits]
        gates = F.softmax(hs[-1] @ mode.router.gate.weight.T + mode.router.gate.bias, dim=-1)
        ensemble = sum(gates[..., j : j + 1] * adapted[j] for j in range(3))
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        gold = labels[mask]
        n += int(gold.numel())

        def stats(logits, mask=mask, gold=gold):
            lp = F.log_softmax(logits[:, :-1][mask], -1)
            gold_lp = lp.gather(-1, gold[:, None])[:, 0]
            return gold_lp, (lp.argmax(-1) == gold).double()

        def add(key, value):
            sums[key] = sums.get(key, 0) + value

        for i, logits in enumerate(lens):
            lp, ok = stats(logits)
            add(f"lens_ce{i}", -lp.sum())
            add(f"lens_acc{i}", ok.sum())
        gold_lps = []
        final_lp = F.log_softmax(adapted[-1][:, :-1][mask], -1)
        for j, logits in enumerate(adapted):
            lp, ok = stats(logits)
            gold_lps.append(lp)
            layer_lp = F.log_softmax(logits[:, :-1][mask], -1)
            add(f"kl{j}", F.kl_div(layer_lp, final_lp, log_target=True, reduction="sum"))
            add(f"agree{j}", (layer_lp.argmax(-1) == final_lp.argmax(-1)).double().sum())
            add(f"adapter_ce{j}", -lp.sum())
            add(f"adapter_acc{j}", ok.sum())
        lp, ok = stats(ensemble)
        add("ens_ce", -lp.sum())
        add("ens_acc", ok.sum())
        stacked = torch.stack(gold_lps, -1)
        add("beats", (stacked[:, :2].max(-1).values > stacked[:, 2]).double().sum())
        add("oracle_ce", -stacked.max(-1).values.sum())
        g = gates[:, :-1][mask]
        add("router", g.sum(0))
        add("argmax", torch.bincount(g.argmax(-1), minlength=3).double())
        add("entropy", -(g * g.log()).sum())
    return {key: value / n for key, value in sums.items()}, n


def test_inspect_numbers_match_a_direct_computation(tiny):
    base, tokenizer = tiny
    mode = _perturbed_mode(base)
    batches = example_batches(generate_problems(5, split="test"), tokenizer, cutoff_len=96, batch_size=2)
    result = inspect_batches(mode, tokenizer, batches, map_examples=2)
    want, n = _direct(base, mode, batches)
    assert result["tokens"] == n and n > 50
    close = dict(rel_tol=1e-4, abs_tol=1e-5)
    for i, row in enumerate(result["layers"]):
        assert math.isclose(row["lens_ce"], float(want[f"lens_ce{i}"]), **close)
        assert math.isclose(row["lens_acc"], float(want[f"lens_acc{i}"]), **close)
    for j, layer in enumerate(result["late_layers"]):
        row = result["layers"][layer]
        assert math.isclose(row["adapter_ce"], float(want[f"adapter_ce{j}"]), **close)
        assert math.isclose(row["adapter_acc"], float(want[f"adapter_acc{j}"]), **close)
        assert math.isclose(row["router_mean"], float(want["router"][j]), **close)
        assert math.isclose(row["router_argmax_share"], float(want["argmax"][j]), **close)
        assert math.isclose(row["kl_from_final"], float(want[f"kl{j}"]), **close)
        assert math.isclose(row["agree_final"], float(want[f"agree{j}"]), **close)
    # the final layer is its own reference; the perturbed adapters move the others away from it
    final_row = result["layers"][result["late_layers"][-1]]
    assert final_row["kl_from_final"] == 0 and final_row["agree_final"] == 1
    assert result["layers"][result["late_layers"][0]]["kl_from_final"] > 1e-4
    # the adapters were perturbed: their CE differs from the plain lens of the same layer
    assert abs(result["layers"][1]["adapter_ce"] - result["layers"][1]["lens_ce"]) > 1e-2
    assert math.isclose(result["ensemble"]["ce"], float(want["ens_ce"]), **close)
    assert math.isclose(result["ensemble"]["acc"], float(want["ens_acc"]), **close)
    assert math.isclose(result["oracle"]["late_beats_final_share"], float(want["beats"]), **close)
    assert math.isclose(result["oracle"]["oracle_ce"], float(want["oracle_ce"]), **close)
    assert math.isclose(result["router"]["entropy"], float(want["entropy"]), **close)
    by_class = result["router"]["by_token_class"]
    assert sum(c["tokens"] for c in by_class.values()) == n
    # per-class means recombine into the overall mean
    for layer in map(str, result["late_layers"]):
        total = sum(c["router_mean"][layer] * c["tokens"] for c in by_class.values() if c["tokens"])
        assert math.isclose(total / n, result["router"]["mean"][layer], **close)
    # how far the gate moved: the perturbed W_g's size and the bias, per late layer
    params, gate = result["router"]["parameters"], mode.router.gate
    assert (
        math.isclose(params["weight_max_abs"], float(gate.weight.abs().max()), **close) and params["weight_max_abs"] > 0
    )
    assert list(params["bias"]) == [str(i) for i in result["late_layers"]]
    assert [round(v, 5) for v in params["bias"].values()] == [round(float(b), 5) for b in gate.bias]


def test_routing_maps_hold_weights_and_top_predictions(tiny):
    base, tokenizer = tiny
    mode = _perturbed_mode(base)
    batches = prompt_batches(["Mia has 5 apples. She buys 3 more."], tokenizer)
    result = inspect_batches(mode, tokenizer, batches, top_n=4)
    (example,) = result["maps"]
    ids = batches[0]["input_ids"][0]
    assert len(example["tokens"]) == len(ids) and len(example["rows"]) == len(ids) - 1
    assert result["tokens"] == len(ids) - 1  # a raw prompt: every token after the first is scored
    row = example["rows"][2]
    assert row["labelled"] and row["gold"] == tokenizer.decode([int(ids[3])])
    assert math.isclose(sum(row["weights"]), 1.0, abs_tol=1e-3)
    assert len(row["top"]) == 3 and all(len(t) == 4 for t in row["top"])
    probs = [p for _, p in row["top"][0]]
    assert probs == sorted(probs, reverse=True)


def test_token_classes():
    assert token_class(" 42") == "digits"
    assert token_class("3.5") == "digits"
    assert token_class(" apples") == "words"
    assert token_class(".") == "punctuation"
    assert token_class(" =") == "punctuation"
    assert token_class("\n") == "whitespace/other"
    assert token_class("") == "whitespace/other"


class _Tokenizer:
    def decode(self, ids):
        return "".join(str(i % 10) if i % 3 == 0 else "a" for i in ids)


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "gemma2", "phi", "falcon"])
def test_final_layer_lens_is_the_model_output_across_architectures(model_type, batch):
    """The final layer's lens is the base model's own output (norm, pre-head projection, head, soft-capping),
    and inspecting changes no module's train/eval mode (dropout would make the numbers random)."""
    base = build_tiny_model(model_type)
    mode = get_mode_model(base, MoDEConfig(num_layers=3))
    modes = {name: m.training for name, m in mode.named_modules()}
    result = inspect_batches(mode, _Tokenizer(), [batch])
    assert {name: m.training for name, m in mode.named_modules()} == modes
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert result["layers"][-1]["lens_ce"] == pytest.approx(float(want), rel=1e-4)
    assert result["final"]["ce"] == pytest.approx(float(want), rel=1e-4)
