"""The routers' own learning rate (`router_lr_scale`): one optimizer group for MoDE's and MoD's routers alike,
one `--router-lr-scale` option whose default is each method's own, and a router that really moves faster."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from modetune.cli import main
from modetune.mod import MoDConfig, get_mod_model
from modetune.mode import MoDEConfig, get_mode_model
from modetune.training.trainer import MethodTrainer
from tests.conftest import TINY_TRAIN_ARGS, build_tiny_model


def _trainer(trainer_cls, model, tmp_path, **args):
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, use_cpu=True, report_to=[], **args)
    return trainer_cls(model=model, args=args)


def _optimizer(trainer_cls, model, tmp_path, **args):
    return _trainer(trainer_cls, model, tmp_path, **args).create_optimizer()


@pytest.mark.parametrize("method", ["mode", "mod"])
def test_routers_get_their_own_group_at_the_scaled_rate(tmp_path, method):
    base = build_tiny_model("llama", num_hidden_layers=5)
    if method == "mode":
        model, trainer_cls = get_mode_model(base, MoDEConfig(router_lr_scale=20.0)), MethodTrainer
    else:
        model, trainer_cls = get_mod_model(base, MoDConfig(router_lr_scale=20.0, skip_first=1)), MethodTrainer
    optimizer = _optimizer(trainer_cls, model, tmp_path)
    routers = {id(p) for p in model.router_parameters()}
    assert routers
    group = next(g for g in optimizer.param_groups if g.get("modetune_routers"))
    assert {id(p) for p in group["params"]} == routers and group["lr"] == pytest.approx(2e-2)
    # the layout MoD runs have always saved (their checkpoints resume): the Trainer's decay and no-decay groups,
    # kept even when emptied, then one router group in the routers' own parameter order
    assert len(optimizer.param_groups) == 3 and optimizer.param_groups[-1] is group
    assert [id(p) for p in group["params"]] == [id(p) for p in model.router_parameters()]
    others = [p for g in optimizer.param_groups if not g.get("modetune_routers") for p in g["params"]]
    assert not routers & {id(p) for p in others}  # every other trainable parameter keeps the base rate
    assert bool(others) == (method == "mode")  # MoDE's per-layer norms (MoD without PEFT trains routers only)
    assert all(g["lr"] == pytest.approx(1e-3) for g in optimizer.param_groups if not g.get("modetune_routers"))


def test_scale_one_leaves_the_trainers_optimizer_as_it_is(tmp_path):
    model = get_mode_model(build_tiny_model("llama", num_hidden_layers=5), MoDEConfig())
    optimizer = _optimizer(MethodTrainer, model, tmp_path)
    assert MoDEConfig().router_lr_scale == 1.0
    assert not any(g.get("modetune_routers") for g in optimizer.param_groups)
    assert {id(p) for p in model.router_parameters()} <= {id(p) for g in optimizer.param_groups for p in g["params"]}


def _router_shift(tmp_path, model_dir, *extra: str) -> tuple[float, dict]:
    out = tmp_path / ("run" + "".join(extra).replace("-", "_"))
    args = ["train", "--model", str(model_dir), "--output", str(out), *TINY_TRAIN_ARGS, "--max-steps", "4", *extra]
    assert main(args) == 0
    weights = load_file(out / "mode_model.safetensors")
    info = json.loads((out / "run.json").read_text())
    return float(weights["router.gate.weight"].abs().max()), info


def test_the_option_moves_the_router_further_end_to_end(tmp_path, tiny_model_dir):
    shift_1, info_1 = _router_shift(tmp_path, tiny_model_dir)
    shift_20, info_20 = _router_shift(tmp_path, tiny_model_dir, "--router-lr-scale", "20")
    assert info_1["mode_config"]["router_lr_scale"] == 1.0 and info_20["mode_config"]["router_lr_scale"] == 20.0
    assert shift_20 > 5 * shift_1 > 0  # W_g starts at 0: how far it moved


def test_one_option_serves_both_methods_with_their_own_defaults():
    from modetune.cli import build_parser
    from modetune.cli.options import dataclass_from_args
    from modetune.cli.train import method_config_from_args
    from modetune.mode import SPEC as MODE

    parser = build_parser()
    given = parser.parse_args(["train", "--model", "m", "--router-lr-scale", "3"])
    assert method_config_from_args(MODE, given).router_lr_scale == 3.0
    assert dataclass_from_args(MoDConfig, given).router_lr_scale == 3.0
    default = parser.parse_args(["train", "--model", "m"])
    assert method_config_from_args(MODE, default).router_lr_scale == MoDEConfig().router_lr_scale == 1.0
    assert dataclass_from_args(MoDConfig, default).router_lr_scale == MoDConfig().router_lr_scale == 10.0
    paper = parser.parse_args(["train", "--model", "m", "--preset", "paper", "--router-lr-scale", "5"])
    assert (
        method_config_from_args(MODE, paper).router_lr_scale == 5.0
        and method_config_from_args(MODE, paper).router_bias is False
    )


def test_router_parameters_keep_their_weight_decay_and_follow_the_schedule(tmp_path):
    model = get_mode_model(build_tiny_model("llama", num_hidden_layers=5), MoDEConfig(router_lr_scale=10.0))
    trainer = _trainer(
        MethodTrainer, model, tmp_path, weight_decay=0.1, warmup_steps=2, lr_scheduler_type="linear", max_steps=10
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    groups = [g for g in trainer.optimizer.param_groups if g.get("modetune_routers")]
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    # as the Trainer decides for any parameter: the gate's weight decays, its bias does not
    assert decay == {id(model.router.gate.weight): 0.1, id(model.router.gate.bias): 0.0}
    base = next(g for g in trainer.optimizer.param_groups if not g.get("modetune_routers"))
    for _ in range(6):  # warm-up, then linear decay: the router's rate stays 10x the others' at every step
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        assert all(g["lr"] == pytest.approx(10 * base["lr"]) for g in groups) and base["lr"] > 0


def test_a_deepspeed_config_with_its_own_optimizer_is_refused(tmp_path):
    from types import SimpleNamespace

    from modetune.errors import ModetuneError

    model = get_mode_model(build_tiny_model("llama", num_hidden_layers=5), MoDEConfig(router_lr_scale=10.0))
    trainer = _trainer(MethodTrainer, model, tmp_path)
    ds_config = SimpleNamespace(config={"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}})
    plugin = SimpleNamespace(hf_ds_config=ds_config)
    trainer.accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), unwrap_model=lambda m: m)
    trainer.is_deepspeed_enabled = True
    with pytest.raises(ModetuneError, match="defines its own optimizer; remove that section"):
        trainer._refuse_a_deepspeed_optimizer_with_router_scale()
    ds_config.config.pop("optimizer")
    trainer._refuse_a_deepspeed_optimizer_with_router_scale()  # the Trainer's AdamW carries the router group


def test_resume_restores_the_router_group_exactly(tmp_path, tiny_model_dir):
    import shutil

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), *TINY_TRAIN_ARGS, "--router-lr-scale", "20", "--output", str(out),
            "--max-steps", "4", "--save-steps", "2"]  # fmt: skip
    assert main(args) == 0
    straight = load_file(out / "mode_model.safetensors")
    shutil.rmtree(out / "checkpoint-4")  # as if killed after step 2's checkpoint
    assert main([*args, "--resume"]) == 0
    resumed = load_file(out / "mode_model.safetensors")
    assert straight["router.gate.weight"].abs().max() > 0
    for key in straight:  # the router's own Adam state and rate came back from checkpoint-2
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


def test_a_run_saved_before_an_option_existed_still_resumes(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    common = ["train", "--model", str(tiny_model_dir), *TINY_TRAIN_ARGS, "--output", str(out), "--save-steps", "2"]
    assert main([*common, "--max-steps", "2"]) == 0
    info = json.loads((out / "run.json").read_text())
    for name in ("router_lr_scale", "router_confidence"):  # what an older modetune wrote
        del info["mode_config"][name]
    (out / "run.json").write_text(json.dumps(info))
    assert main([*common, "--max-steps", "4", "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["global_step"] == 4
