"""MoM on the real SmolLM2-135M: the pool built from its 30 layers, fixed routes, reproduces its logits and
its greedy generation (default suite, ~15 s); live routers, lm-eval's HFLM and save/load work on it (slow)."""

from __future__ import annotations

import pytest
import torch

from modetune.loading import ensure_embedded_model, load_model_and_tokenizer
from modetune.mom import MoMConfig, MoMForCausalLM, from_pretrained_layers


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_model_and_tokenizer(str(ensure_embedded_model("smollm2-135m")))
    return model, tokenizer


def test_fixed_routes_reproduce_smollm2(smollm2):
    model, tokenizer = smollm2
    mom = from_pretrained_layers(model).fix_routes_to_layers()
    assert mom.config.num_attention_modules == mom.config.num_rounds == 30
    batch = tokenizer(["Natalia sold clips to 48 of her friends.", "Hi"], return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        a, b = model(**batch).logits, mom(**batch).logits
        torch.testing.assert_close(b[real], a[real], rtol=0, atol=1e-4)
        one = tokenizer("The capital of France is", return_tensors="pt")
        assert torch.equal(model(**one).logits, mom(**one).logits)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(model.generate(**one, **kw), mom.generate(**one, **kw))


@pytest.mark.slow  # ~15 s
def test_routed_smollm2_runs_saves_and_scores_with_lm_eval(smollm2, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = smollm2
    pool = dict(num_attention_modules=30, num_ffn_modules=30, num_rounds=30)
    mom = from_pretrained_layers(model, MoMConfig(**pool, k_per_round=2, num_skip_modules=1, router_init_bias=4.0))
    mom.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = MoMForCausalLM.from_pretrained(tmp_path).eval()
    one = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        a, b = mom(**one, output_routes=True), loaded(**one, output_routes=True)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a.routes, b.routes, strict=True))
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-4)  # bitwise on the tiny models
    lm = HFLM(pretrained=str(tmp_path), batch_size=1, device="cpu")
    reqs = [Instance("loglikelihood", {}, ("The capital of France is", c), 0) for c in (" Paris", " banana")]
    (ll_paris, _), (ll_banana, _) = lm.loglikelihood(reqs)
    assert ll_paris > ll_banana
