"""The chunked loss equals the straightforward one: values and gradients, every variant, odd chunk sizes."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from modetune import MoDEConfig, get_mode_model
from modetune.errors import ConfigError
from modetune.mode.losses import LossPlan, auto_chunk_size, divergence, mode_loss_chunked, mode_loss_reference
from tests.conftest import build_tiny_model


def _inputs(seed=0, k=3, b=2, t=9, d=8, v=17):
    g = torch.Generator().manual_seed(seed)
    ys = torch.randn(k, b, t, d, generator=g, requires_grad=True)
    router = torch.randn(b, t, k, generator=g, requires_grad=True)
    weight = torch.randn(v, d, generator=g) * 0.5
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :4] = -100
    labels[1, 7] = -100
    return ys, router, weight, labels


@pytest.mark.parametrize("distill", ["kl", "reverse_kl", "js", "labels", "none"])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 64])
@pytest.mark.parametrize("detach_teacher", [True, False])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_equals_reference(distill, chunk_size, detach_teacher, softcap):
    ys, router_logits, weight, labels = _inputs()
    bias = torch.randn(weight.shape[0]) * 0.1

    def project(y):
        z = y @ weight.T + bias
        return z if softcap is None else torch.tanh(z / softcap) * softcap

    plan = LossPlan(distill, 0.7, 2.0, detach_teacher, students=(0, 1), per_layer=True)
    results = []
    for fn in (mode_loss_reference, None):
        ys.grad = router_logits.grad = None
        gates = torch.softmax(router_logits, -1)
        if fn is None:
            parts = mode_loss_chunked(ys, gates, labels, project, plan, chunk_size)
        else:
            parts = fn(ys, gates, labels, project, plan)
        parts.total.backward()
        results.append((parts, ys.grad.clone(), router_logits.grad.clone()))
    (ref, ref_gy, ref_gr), (chk, chk_gy, chk_gr) = results
    assert ref.num_tokens == chk.num_tokens == int((labels[:, 1:] != -100).sum())
    assert abs(chk.total.item() - ref.total.item()) / abs(ref.total.item()) < 1e-5
    torch.testing.assert_close(chk.ce, ref.ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chk.distill, ref.distill, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chk.layer_ce, ref.layer_ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chk_gy, ref_gy, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(chk_gr, ref_gr, rtol=1e-4, atol=1e-6)


def test_labels_supervise_each_student_with_its_own_cross_entropy():
    """distill='labels': a student's term is that layer's cross-entropy on the labels, the final layer gets none,
    and the total is the ensemble's CE + lambda * the students' CEs (deep supervision, no teacher)."""
    ys, router_logits, weight, labels = _inputs(seed=5)
    plan = LossPlan("labels", 0.4, 1.0, True, students=(0, 1), per_layer=True)
    parts = mode_loss_chunked(ys, torch.softmax(router_logits, -1), labels, lambda y: y @ weight.T, plan, 4)
    torch.testing.assert_close(parts.distill, parts.layer_ce[:2])
    torch.testing.assert_close(parts.total.detach(), parts.ce + 0.4 * parts.layer_ce[:2].sum())
    parts.total.backward()
    assert ys.grad[2].abs().sum() > 0  # the final layer learns through the ensemble's CE only ...
    alone = mode_loss_chunked(ys, torch.softmax(router_logits, -1), labels, lambda y: y @ weight.T,
                              LossPlan("none", 0.0, 1.0, True, students=(), per_layer=True), 4)  # fmt: skip
    ys.grad = None
    alone.total.backward()
    grad_final_alone = ys.grad[2].clone()
    ys.grad = None
    mode_loss_chunked(ys, torch.softmax(router_logits, -1), labels, lambda y: y @ weight.T, plan, 4).total.backward()
    torch.testing.assert_close(ys.grad[2], grad_final_alone)  # ... so its gradient is the same as without the term


def test_hidden_space_ce_equals_logit_mixing():
    """Without distillation the chunked path projects the mixed hidden state once: same CE, same grads."""
    ys, router_logits, weight, labels = _inputs(seed=3)
    project = lambda y: y @ weight.T  # noqa: E731
    out = []
    for per_layer in (True, False):
        ys.grad = router_logits.grad = None
        plan = LossPlan("none", 0.0, 1.0, True, students=(), per_layer=per_layer)
        parts = mode_loss_chunked(ys, torch.softmax(router_logits, -1), labels, project, plan, 4)
        parts.total.backward()
        out.append((parts.total.detach(), ys.grad.clone(), router_logits.grad.clone()))
    for a, b in zip(out[0], out[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ignored_positions_never_reach_the_head():
    ys, router_logits, weight, labels = _inputs()
    seen = []

    def project(y):
        seen.append(y.shape[0])
        return y @ weight.T

    plan = LossPlan("kl", 1.0, 1.0, True, students=(0, 1), per_layer=True)
    mode_loss_chunked(ys, torch.softmax(router_logits, -1), labels, project, plan, 1000)
    n_valid = int((labels[:, 1:] != -100).sum())
    assert seen == [3 * n_valid]  # the three layers' labelled positions, projected together


def test_num_items_in_batch_sets_the_denominator():
    ys, router_logits, weight, labels = _inputs()
    plan = LossPlan("kl", 1.0, 1.0, True, students=(0, 1), per_layer=True)
    gates = torch.softmax(router_logits, -1)
    mean = mode_loss_chunked(ys, gates, labels, lambda y: y @ weight.T, plan, 4)
    summed = mode_loss_chunked(ys, gates, labels, lambda y: y @ weight.T, plan, 4, num_items_in_batch=1)
    torch.testing.assert_close(summed.total, mean.total * mean.num_tokens)


def test_divergences_known_values():
    a = torch.tensor([[0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    b = torch.tensor([[0.0, 0.0]])  # q = [1/2, 1/2]
    kl_qp = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert divergence(a, b, "kl", 1.0).item() == pytest.approx(kl_qp, rel=1e-6)  # KL(teacher=b || student=a)
    kl_pq = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert divergence(a, b, "reverse_kl", 1.0).item() == pytest.approx(kl_pq, rel=1e-6)
    m = [0.375, 0.625]
    js = 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])) + 0.5 * (
        0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    )
    assert divergence(a, b, "js", 1.0).item() == pytest.approx(js, rel=1e-6)
    assert divergence(a, a, "kl", 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_auto_chunk_size():
    assert auto_chunk_size(49152) == 128
    assert auto_chunk_size(49152, num_layers=3) == 32  # the live chunk does not grow with k
    assert auto_chunk_size(150_000, num_layers=6) == 8
    assert auto_chunk_size(100) == 65536


@pytest.mark.parametrize("distill", ["kl", "reverse_kl", "js", "labels", "none"])
def test_model_chunked_vs_reference_with_lora_gradients(distill, batch):
    """End to end through a LoRA + MoDE model: loss and every trainable gradient agree."""
    from peft import LoraConfig, get_peft_model

    grads = []
    for implementation, chunk in (("reference", 0), ("chunked", 5)):
        torch.manual_seed(0)
        peft_model = get_peft_model(
            build_tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
        )
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
        cfg = MoDEConfig(num_layers=3, distill=distill, loss_implementation=implementation, loss_chunk_size=chunk)
        mode = get_mode_model(peft_model, cfg).train()
        with torch.no_grad():
            mode.router.gate.weight.normal_(0, 0.3)
        out = mode(**batch)
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in mode.named_parameters() if p.grad is not None}))
    (ref_loss, ref), (chk_loss, chk) = grads
    assert abs(chk_loss.item() - ref_loss.item()) / ref_loss.item() < 1e-5
    assert ref.keys() == chk.keys() and any("lora_A" in n for n in ref)
    for name in ref:
        torch.testing.assert_close(chk[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_distill_every_and_rotation(batch):
    mode = get_mode_model(
        build_tiny_model("llama"), MoDEConfig(num_layers=4, distill_every=2, distill_schedule="rotate")
    )
    mode.train()
    seen = []
    for step in range(4):
        mode.current_step = step
        out = mode(**batch)
        seen.append((out.distill_loss > 0).tolist())
    assert seen == [[True, False, False], [False, False, False], [False, False, True], [False, False, False]]


def test_layer_metrics_every(batch):
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, distill="none", layer_metrics_every=3))
    mode.train()
    present = []
    for step in range(4):
        mode.current_step = step
        present.append(mode(**batch).layer_ce is not None)
    assert present == [True, False, False, True]
    mode.eval()
    with torch.no_grad():
        assert mode(**batch).layer_ce is not None  # evaluation always reports them


def test_without_liger_auto_is_chunked_and_explicit_liger_says_how_to_install(batch, monkeypatch):
    """A plain `pip install modetune` has no liger-kernel: 'auto' trains with the chunked loss."""
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", None)  # import raises ImportError
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3)).train()
    assert mode.loss_implementation(torch.device("cuda")) == "chunked"
    assert torch.isfinite(mode(**batch).loss)
    with pytest.raises(ConfigError, match=r"liger-kernel is not installed \(pip install 'modetune\[liger\]'\)"):
        get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, loss_implementation="liger"))
