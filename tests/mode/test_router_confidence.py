"""router_confidence=True: the router also reads how sure each late layer is (issue 11's suggested variant)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modetune import MoDEConfig, MoDEModel, get_mode_model
from modetune.cli import build_parser
from modetune.cli.train import method_config_from_args
from modetune.errors import ConfigError
from modetune.mode import SPEC as MODE
from modetune.mode.ensemble import confidence_feature_count, confidence_features
from tests.conftest import build_tiny_model
from tests.mode.test_model import reference_head


def _confident_model(k: int = 3) -> MoDEModel:
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=k, router_confidence=True))
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 0.5)
        for adapter in mode.adapters:
            adapter.norm.weight.mul_(1.5)  # the late layers' predictions differ from their plain logit lens
    return mode.eval()


def test_features_match_a_direct_computation(batch):
    mode = _confident_model()
    base = mode.causal_lm
    with torch.no_grad():
        out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        hs = out.hidden_states
        layer_logits = [reference_head(base, mode.adapters[s].norm(hs[i + 1])) for s, i in enumerate([1, 2])]
        layer_logits.append(out.logits)
        logps = [F.log_softmax(z, -1) for z in layer_logits]
        expected = torch.stack(
            [-(lp.exp() * lp).sum(-1) for lp in logps]
            + [lp.max(-1).values for lp in logps]
            + [(lp.argmax(-1) == logps[-1].argmax(-1)).float() for lp in logps[:-1]],
            dim=-1,
        )
        captured = {}
        handle = mode.router.register_forward_pre_hook(lambda m, args: captured.update(x=args[0], f=args[1]))
        routed = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).router_weights
        handle.remove()
    assert expected.shape[-1] == confidence_feature_count(3) == 8
    torch.testing.assert_close(captured["f"], expected, rtol=1e-5, atol=1e-5)
    assert 0 < float(expected[..., 6:].mean()) < 1  # agreement really varies here
    # the gate reads [y_L; features]
    gate = mode.router.gate
    manual = torch.softmax(torch.cat([captured["x"], expected], -1) @ gate.weight.T + gate.bias, dim=-1)
    torch.testing.assert_close(routed, manual, rtol=1e-5, atol=1e-5)
    # chunking over positions does not change the features
    ys = [mode.adapters[s](hs[i + 1], base.model.norm) for s, i in enumerate([1, 2])] + [captured["x"]]
    torch.testing.assert_close(confidence_features(ys, mode._project, 3), captured["f"], rtol=1e-5, atol=1e-5)


def test_starts_exactly_like_the_final_state_router(batch):
    """W_g = 0 at the start, so the extra inputs change nothing until training moves them."""
    plain = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3)).eval()
    confident = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, router_confidence=True)).eval()
    assert confident.router.gate.weight.shape == (3, 32 + 8)
    with torch.no_grad():
        a, b = plain(**batch), confident(**batch)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.loss, b.loss)


def test_trains_the_feature_weights_without_gradient_into_the_features(batch):
    mode = _confident_model().train()
    mode(**batch).loss.backward()
    grad = mode.router.gate.weight.grad
    assert grad is not None and grad[:, 32:].abs().sum() > 0  # the router learns to read the features
    # the adapters still train (through the mixture and the distillation), nothing else of the base does
    assert all(p.grad is not None for p in mode.adapters.parameters())
    assert all(p.grad is None for p in mode.causal_lm.parameters())


def test_saves_loads_and_decodes_the_same(tmp_path, batch):
    mode = _confident_model()
    mode.save_pretrained(tmp_path)
    loaded = MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path).eval()
    assert loaded.mode_config.router_confidence is True
    with torch.no_grad():
        torch.testing.assert_close(mode(**batch).logits, loaded(**batch).logits)
    ids, mask = batch["input_ids"][:, :8], batch["attention_mask"][:, :8]
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    cached = loaded.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
    assert torch.equal(cached, loaded.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw))


def test_option_is_validated_and_reaches_the_cli():
    with pytest.raises(ConfigError, match="router_confidence"):
        MoDEConfig(router_confidence="yes")
    args = build_parser().parse_args(["train", "--output", "x", "--data", "synthetic", "--router-confidence"])
    assert method_config_from_args(MODE, args).router_confidence is True
    assert MoDEConfig().router_confidence is False and MoDEConfig.paper().router_confidence is False
