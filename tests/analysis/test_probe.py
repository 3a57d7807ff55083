"""The router probe: held-out routers on richer inputs find signal where there is some, and only there."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from modetune import MoDEConfig, get_mode_model
from modetune.analysis.lens import prompt_batches
from modetune.analysis.probe import collect_late_logits, mixture_ce, probe_markdown, probe_router
from modetune.cli import main
from tests.conftest import build_tiny_model


def _two_layer_puzzle(n_examples: int = 40, per_example: int = 10, vocab: int = 6, d: int = 4):
    """k = 2 late layers; on each token exactly one is right and sure, the other wrong and unsure. Which one is
    written only in the first (non-final) layer's state, never in y_L."""
    torch.manual_seed(0)
    n = n_examples * per_example
    gold = torch.randint(vocab, (n,))
    wrong = (gold + 1) % vocab
    first_right = torch.rand(n) < 0.5
    logits = torch.zeros(n, 2, vocab)
    rows = torch.arange(n)
    sure, unsure = 6.0, 1.0
    logits[rows, 0, torch.where(first_right, gold, wrong)] = torch.where(first_right, sure, unsure)
    logits[rows, 1, torch.where(first_right, wrong, gold)] = torch.where(first_right, unsure, sure)
    ys = torch.randn(n, 2, d)
    ys[:, 0, 0] = first_right.float() * 2 - 1
    return {
        "ys": ys,
        "logits": logits,
        "gold": gold,
        "example": torch.arange(n_examples).repeat_interleave(per_example),
        "gates": torch.tensor([0.0, 1.0]).expand(n, 2),
    }


def test_probe_finds_the_signal_only_in_the_inputs_that_carry_it():
    result = probe_router(_two_layer_puzzle(), steps=200)
    probes = result["probes"]
    final = result["final_ce"]
    # the final layer alone is wrong on half the tokens; the oracle is right and sure on all of them
    assert result["oracle_ce"] < 0.05 < final
    assert result["trained_router_ce"] == pytest.approx(final)
    # a fixed weighting already helps (the final layer is often wrong); y_L is noise, reading it adds nothing
    constant = probes["constant"]["ce"]
    assert constant < final
    assert probes["final_state"]["ce"] > 0.95 * constant
    # the first layer's state and the confidence features both tell which layer to trust
    for name in ("all_states", "confidence", "final_state+confidence"):
        assert probes[name]["ce"] < 0.5 * constant
        assert probes[name]["ci95"][1] < 0
    table = probe_markdown(result)
    assert "probe: confidence" in table and "oracle" in table


def test_collect_matches_the_model_and_the_trained_router(batch):
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3)).eval()
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 0.5)
        out = mode(**batch)
    collected = collect_late_logits(mode, [dict(batch)])
    mask = batch["labels"][:, 1:] != -100
    assert collected["logits"].shape == (int(mask.sum()), 3, 96)
    assert collected["example"].tolist() == torch.arange(2)[:, None].expand_as(mask)[mask].tolist()
    # the mixture of the collected logits under the collected gates is the model's own ensemble
    ensemble = out.logits[:, :-1][mask]
    torch.testing.assert_close(
        mixture_ce(collected["gates"], collected["logits"], collected["gold"]),
        F.cross_entropy(ensemble, collected["gold"], reduction="none"),
        rtol=1e-4,
        atol=1e-4,
    )
    assert len(collect_late_logits(mode, [dict(batch), dict(batch)], max_tokens=1)["gold"]) == int(mask.sum())


def test_inspect_router_probe_end_to_end(tmp_path, tiny_model_dir):
    out = tmp_path / "inspect"
    args = ["inspect", "--model", str(tiny_model_dir), "--data", "synthetic:6:1", "--cutoff-len", "96"]
    assert main([*args, "--router-probe", "--output", str(out)]) == 0
    result = json.loads((out / "router_probe.json").read_text())
    assert set(result["probes"]) == {"constant", "final_state", "all_states", "confidence", "final_state+confidence"}
    lens = json.loads((out / "lens.json").read_text())["results"]["model"]
    assert result["final_ce"] == pytest.approx(lens["final"]["ce"], rel=1e-4)
    assert result["oracle_ce"] == pytest.approx(lens["oracle"]["oracle_ce"], rel=1e-4)
    assert "| probe: final_state |" in (out / "router_probe.md").read_text()


def test_router_probe_refuses_what_it_cannot_do(tmp_path, tiny_model_dir, capsys):
    base = ["inspect", "--model", str(tiny_model_dir), "--cutoff-len", "96", "--router-probe"]
    assert main([*base, "--prompt", "one two three", "--output", str(tmp_path / "a")]) == 2
    assert "needs at least two examples" in capsys.readouterr().err
    assert main([*base, "--data", "synthetic:4:1", "--num-layers", "1", "--output", str(tmp_path / "b")]) == 2
    assert "needs k >= 2" in capsys.readouterr().err


def test_prompt_batches_are_examples_for_the_probe(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batches = prompt_batches(["a b c d", "e f g h"], tok)
    mode = get_mode_model(build_tiny_model("llama", vocab_size=tok.vocab_size), MoDEConfig(num_layers=2))
    collected = collect_late_logits(mode, batches)
    assert collected["example"].unique().tolist() == [0, 1]
