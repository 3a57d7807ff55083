"""What each layer predicts, what the late layers add, and what the router picks: the numbers behind `modetune inspect`.

For every labelled token (the response tokens of a dataset, or every token of a raw prompt) one pass records:

* the **plain logit lens** of every decoder layer l: head(final_norm(h_l)), the model's own final norm and
  output path applied to the residual stream after layer l (for the final layer this is the model's output);
* each **late layer through its MoDE adapter**: head(N_i(h_i)), what the ensemble actually mixes;
* the **ensemble**: sum_i g_i * head(N_i(h_i)) with the router's weights g;
* the **oracle**: how often some non-final late layer gives the gold token a higher probability than the
  final layer, and the cross-entropy if each token could pick its best late layer;
* **distance to the final layer** of each late layer through its adapter: KL(p_final || p_i), the term MoDE's
  distillation minimises, and how often its top-1 token is the final layer's (is it a copy of the final layer?);
* the **router**: mean weight per late layer, how often each layer has the largest weight, the mean
  per-token entropy, and the mean weight per layer by the class of the token being predicted.

Everything is computed from forward hooks on the wrapped model's own modules (decoder layers, adapters,
router), so the numbers are those of the model MoDE runs, not of a re-implementation.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from modetune.data.sft import build_sft_dataset, make_collator

TOKEN_CLASSES = ("digits", "words", "punctuation", "whitespace/other")


def token_class(text: str) -> str:
    """The class of a token's text: digits (any digit), words (letters), punctuation, or whitespace/other."""
    stripped = text.strip()
    if any(ch.isdigit() for ch in stripped):
        return "digits"
    if any(ch.isalpha() for ch in stripped):
        return "words"
    if stripped and all(unicodedata.category(ch).startswith(("P", "S")) for ch in stripped):
        return "punctuation"
    return "whitespace/other"


@dataclass
class TokenRow:
    """One predicted position of one example, for the routing maps."""

    position: int  # index of the predicted token in the sequence
    gold: str  # the predicted (gold) token's text
    labelled: bool  # counted in the metrics (a response token, or any token of a raw prompt)
    weights: list[float]  # router weight per late layer (earliest first)
    top: list[list[tuple[str, float]]] | None  # per late layer (through its adapter): top-n (token, prob)
    gold_prob: list[float] | None  # per late layer: probability of the gold token


class _Accumulator:
    """Token-weighted sums over batches."""

    def __init__(self, num_layers: int, k: int):
        self.n = 0
        self.lens_ce = torch.zeros(num_layers, dtype=torch.float64)
        self.lens_acc = torch.zeros(num_layers, dtype=torch.float64)
        self.adapter_ce = torch.zeros(k, dtype=torch.float64)
        self.adapter_acc = torch.zeros(k, dtype=torch.float64)
        self.kl_from_final = torch.zeros(k, dtype=torch.float64)
        self.agree_final = torch.zeros(k, dtype=torch.float64)
        self.ens_ce = 0.0
        self.ens_acc = 0.0
        self.oracle_beats = 0.0
        self.oracle_ce = 0.0
        self.best_layer = torch.zeros(k, dtype=torch.float64)
        self.router_sum = torch.zeros(k, dtype=torch.float64)
        self.router_argmax = torch.zeros(k, dtype=torch.float64)
        self.router_entropy = 0.0
        self.class_sum = {c: torch.zeros(k, dtype=torch.float64) for c in TOKEN_CLASSES}
        self.class_n = dict.fromkeys(TOKEN_CLASSES, 0)
        self.class_entropy = dict.fromkeys(TOKEN_CLASSES, 0.0)

    def add_lens(self, i: int, logits: torch.Tensor, gold: torch.Tensor) -> None:
        """Layer i's plain logit lens at the scored positions."""
        lp, correct, _ = _gold_stats(logits, gold)
        self.lens_ce[i] += float(-lp.double().sum())
        self.lens_acc[i] += float(correct.sum())

    def add_late_layers(self, logits_k: list[torch.Tensor], g: torch.Tensor, gold: torch.Tensor) -> list[torch.Tensor]:
        """The k late layers' own predictions, their distance from the final layer's, the router's mixture of
        them ([n, k] weights g) and the per-token oracle; returns each layer's log-probs [n, V]."""
        gold_lps, logps = [], []
        for i, logits in enumerate(logits_k):
            lp, correct, logp = _gold_stats(logits, gold)
            self.adapter_ce[i] += float(-lp.double().sum())
            self.adapter_acc[i] += float(correct.sum())
            gold_lps.append(lp)
            logps.append(logp)
        final_logp = logps[-1]
        final_p = final_logp.exp()
        for i, logp in enumerate(logps):
            kl = (final_p * (final_logp - logp)).sum(-1)
            self.kl_from_final[i] += float(kl.double().sum())
            self.agree_final[i] += float((logp.argmax(-1) == final_logp.argmax(-1)).sum())
        k = len(logits_k)
        lp, correct, _ = _gold_stats(sum(g[:, i : i + 1] * logits_k[i] for i in range(k)), gold)
        self.ens_ce += float(-lp.double().sum())
        self.ens_acc += float(correct.sum())
        stacked = torch.stack(gold_lps, dim=-1)  # [n, k]
        if k > 1:
            self.oracle_beats += float((stacked[:, :-1].max(-1).values > stacked[:, -1]).sum())
        self.oracle_ce += float(-stacked.max(-1).values.double().sum())
        self.best_layer += torch.bincount(stacked.argmax(-1), minlength=k).double().cpu()
        return logps

    def add_router(self, g: torch.Tensor, classes: list[str]) -> None:
        """The router's weights [n, k]: mean, argmax counts and entropy, overall and per gold-token class."""
        k = g.shape[-1]
        entropy = -(g * g.clamp_min(1e-12).log()).sum(-1)  # [n]
        self.router_sum += g.double().sum(0).cpu()
        self.router_argmax += torch.bincount(g.argmax(-1), minlength=k).double().cpu()
        self.router_entropy += float(entropy.double().sum())
        for j, cls in enumerate(classes):
            self.class_sum[cls] += g[j].double().cpu()
            self.class_n[cls] += 1
            self.class_entropy[cls] += float(entropy[j])


def _gold_stats(logits: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob of gold [n], top-1 correct [n], log-probs [n, V]) from logits [n, V]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    gold_lp = logp.gather(-1, gold[:, None])[:, 0]
    correct = (logits.argmax(-1) == gold).double()
    return gold_lp, correct, logp


@contextmanager
def capture_late_states(model: Any, *, every_layer: bool = False) -> Iterator[dict[Any, torch.Tensor]]:
    """Eval mode and forward hooks on a `MoDEModel`: each forward fills the dict with ("adapter", i) = N_i(h_i),
    "final_y" = y_L (the router's input), "gates" = the router's weights and, with `every_layer`,
    ("layer", i) = h_i of every decoder layer. Hooks are removed and training modes restored exactly afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    states: dict[Any, torch.Tensor] = {}

    def store(key: Any):
        def hook(_module, _args, output):
            states[key] = output[0] if isinstance(output, tuple) else output

        return hook

    layers = model._located.layers if every_layer else []
    handles = [layer.register_forward_hook(store(("layer", i))) for i, layer in enumerate(layers)]
    handles += [adapter.register_forward_hook(store(("adapter", i))) for i, adapter in enumerate(model.adapters)]
    handles.append(model.router.register_forward_hook(store("gates")))
    handles.append(model.router.register_forward_pre_hook(lambda _m, args: states.__setitem__("final_y", args[0])))
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training


@torch.no_grad()
def inspect_batches(
    model: Any,
    tokenizer: Any,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    top_n: int = 5,
    map_examples: int = 20,
) -> dict[str, Any]:
    """Run `model` (a `MoDEModel`) over `batches` (input_ids, attention_mask, labels with -100 for
    unscored tokens) and return the per-layer lens table, oracle, router summary and routing maps.

    Position t predicts token t+1 (the causal shift), as in training.
    """
    located = model._located
    layers = located.layers
    num_layers = len(layers)
    late = list(model.layer_indices)
    k = len(late)
    final_norm = located.final_norm

    def project(y: torch.Tensor) -> torch.Tensor:
        return located.project(y.to(model.dtype)).float()

    acc = _Accumulator(num_layers, k)
    maps: list[dict[str, Any]] = []
    with capture_late_states(model, every_layer=True) as states:
        for batch in batches:
            states.clear()
            batch = {key: value.to(model.device) for key, value in batch.items()}
            labels = batch.pop("labels")
            model(**batch, skip_logits=True)
            gates = states["gates"].float()  # [B, T, k]
            shifted = labels[:, 1:]
            mask = shifted != -100  # [B, T-1]
            if not bool(mask.any()):
                continue
            gold = shifted[mask]  # [n]
            n = int(gold.numel())
            acc.n += n

            def at_labels(t: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
                return t[:, :-1][mask]

            # the plain logit lens of every layer: the model's own final norm, then its output path
            for i in range(num_layers):
                h = at_labels(states[("layer", i)])
                acc.add_lens(i, project(final_norm(h) if final_norm is not None else h), gold)
            # the late layers as MoDE sees them: adapters for the non-final ones, y_L for the final one
            ys = [states[("adapter", i)] for i in range(k - 1)] + [states["final_y"]]
            g = at_labels(gates)  # [n, k]
            logps = acc.add_late_layers([project(at_labels(y)) for y in ys], g, gold)
            acc.add_router(g, [token_class(tokenizer.decode([int(t)])) for t in gold.tolist()])
            # routing maps for the first examples
            if len(maps) < map_examples:
                maps.extend(
                    _maps_for_batch(tokenizer, batch, labels, gates, mask, logps, gold, top_n, map_examples - len(maps))
                )
    result = _summarize(acc, late, num_layers, maps)
    result["router"]["parameters"] = router_parameters(model)
    return result


def _maps_for_batch(
    tokenizer: Any,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    gates: torch.Tensor,
    mask: torch.Tensor,
    logps: list[torch.Tensor],
    gold: torch.Tensor,
    top_n: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Per example: its tokens and, for every predicted position, the router weights (and, at labelled
    positions, each late layer's top-n predictions and gold-token probability)."""
    out = []
    k = gates.shape[-1]
    # row index into the [n] labelled tokens of this batch, per (example, position)
    flat_index = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    flat_index[mask] = torch.arange(int(mask.sum()), device=mask.device)
    tops = [lp.topk(top_n, dim=-1) for lp in logps]
    attention = batch.get("attention_mask")
    for b in range(min(limit, batch["input_ids"].shape[0])):
        ids = batch["input_ids"][b]
        keep = attention[b].bool() if attention is not None else torch.ones_like(ids, dtype=torch.bool)
        positions = keep.nonzero()[:, 0].tolist()
        tokens = [tokenizer.decode([int(ids[p])]) for p in positions]
        rows = []
        for p in positions[1:]:
            row_i = int(flat_index[b, p - 1])
            top = gold_prob = None
            if row_i >= 0:
                top = [
                    [
                        (tokenizer.decode([int(t)]), round(math.exp(float(v)), 4))
                        for t, v in zip(tops[i].indices[row_i].tolist(), tops[i].values[row_i].tolist(), strict=True)
                    ]
                    for i in range(k)
                ]
                gold_prob = [round(math.exp(float(logps[i][row_i, int(gold[row_i])])), 4) for i in range(k)]
            rows.append(
                TokenRow(
                    position=positions.index(p),
                    gold=tokenizer.decode([int(ids[p])]),
                    labelled=row_i >= 0,
                    weights=[round(float(w), 4) for w in gates[b, p - 1].tolist()],
                    top=top,
                    gold_prob=gold_prob,
                ).__dict__
            )
        out.append({"tokens": tokens, "rows": rows})
    return out


def _summarize(acc: _Accumulator, late: list[int], num_layers: int, maps: list[dict[str, Any]]) -> dict[str, Any]:
    n = max(acc.n, 1)
    k = len(late)
    layers = []
    for i in range(num_layers):
        row: dict[str, Any] = {
            "layer": i,
            "lens_ce": float(acc.lens_ce[i]) / n,
            "lens_acc": float(acc.lens_acc[i]) / n,
            "adapter_ce": None,
            "adapter_acc": None,
            "kl_from_final": None,
            "agree_final": None,
            "router_mean": None,
            "router_argmax_share": None,
        }
        if i in late:
            j = late.index(i)
            row.update(
                adapter_ce=float(acc.adapter_ce[j]) / n,
                adapter_acc=float(acc.adapter_acc[j]) / n,
                kl_from_final=float(acc.kl_from_final[j]) / n,
                agree_final=float(acc.agree_final[j]) / n,
                router_mean=float(acc.router_sum[j]) / n,
                router_argmax_share=float(acc.router_argmax[j]) / n,
            )
        layers.append(row)
    by_class = {
        cls: {
            "tokens": acc.class_n[cls],
            "router_mean": {
                str(late[j]): (float(acc.class_sum[cls][j]) / acc.class_n[cls] if acc.class_n[cls] else None)
                for j in range(k)
            },
            "router_entropy": acc.class_entropy[cls] / acc.class_n[cls] if acc.class_n[cls] else None,
        }
        for cls in TOKEN_CLASSES
    }
    return {
        "tokens": acc.n,
        "num_model_layers": num_layers,
        "late_layers": late,
        "layers": layers,
        "ensemble": {"ce": acc.ens_ce / n, "acc": acc.ens_acc / n},
        "final": {"ce": float(acc.adapter_ce[-1]) / n, "acc": float(acc.adapter_acc[-1]) / n},
        "oracle": {
            "late_beats_final_share": acc.oracle_beats / n,
            "oracle_ce": acc.oracle_ce / n,
            "best_layer_share": {str(late[j]): float(acc.best_layer[j]) / n for j in range(k)},
        },
        "router": {
            "mean": {str(late[j]): float(acc.router_sum[j]) / n for j in range(k)},
            "argmax_share": {str(late[j]): float(acc.router_argmax[j]) / n for j in range(k)},
            "entropy": acc.router_entropy / n,
            "max_entropy": math.log(k) if k > 1 else 0.0,
            "by_token_class": by_class,
        },
        "maps": maps,
    }


def router_parameters(model: Any) -> dict[str, Any]:
    """How far the router's gate has moved: W_g starts at 0, so its size is the distance trained (issue 11 found
    it under 0.02 after 100 steps at lr 1e-3, which is why `--router-lr-scale` exists)."""
    gate = model.router.gate
    weight = gate.weight.detach().float()
    late = [str(i) for i in model.layer_indices]
    bias = gate.bias.detach().float().tolist() if gate.bias is not None else None
    return {
        "weight_max_abs": float(weight.abs().max()),
        "weight_norm": float(weight.norm()),
        "bias": dict(zip(late, bias, strict=True)) if bias is not None else None,
    }


def example_batches(
    examples: Sequence[Any], tokenizer: Any, *, template: str = "alpaca", cutoff_len: int = 256, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches of `Example` records as in training: only the response tokens are labelled."""
    dataset = build_sft_dataset(list(examples), tokenizer, template, cutoff_len, train_on_inputs=False)
    collate = make_collator(tokenizer)
    return [
        collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        for start in range(0, len(dataset), batch_size)
    ]


def prompt_batches(texts: Sequence[str], tokenizer: Any, *, cutoff_len: int = 256) -> list[dict[str, torch.Tensor]]:
    """Raw texts (no template), one per batch: every token after the first is a labelled prediction."""
    batches = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=cutoff_len)
        ids = enc["input_ids"]
        batches.append({"input_ids": ids, "attention_mask": enc["attention_mask"], "labels": ids.clone()})
    return batches
