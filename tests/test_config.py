import pytest

from gptdist.config import batch_plan, build_config, config_from_argv, parse_overrides, resolve_model
from gptdist.errors import ConfigError
from launchers import python


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 7\n  lr: 6e-4\nmodel:\n  preset: test\ndata:\n  seq_len: 32\n")
    cfg = build_config(path, [("train.max_steps", 9), ("backend", "ddp")])
    assert cfg.train.max_steps == 9 and cfg.backend == "ddp"
    assert cfg.train.lr == pytest.approx(6e-4)  # YAML 1.1 reads 6e-4 as a string; we accept it as a float
    assert resolve_model(cfg).n_embd == 32  # from the preset


def test_cli_override_forms():
    path, overrides = parse_overrides(["--config", "x.yaml", "--train.max_steps=5", "--backend", "fsdp", "--log.wandb"])
    assert path == "x.yaml"
    assert [(k, v.parsed) for k, v in overrides] == [("train.max_steps", 5), ("backend", "fsdp"), ("log.wandb", True)]


def test_cli_string_fields_take_the_text_as_typed():
    # YAML 1.1 would read `off`, `yes`, `1e3` as false, true and a string/number; a name is a name
    for text in ("off", "yes", "1e3", "007"):
        cfg = config_from_argv([f"--log.run_name={text}", "--train.max_steps", "5", "--train.compile=yes"])
        assert cfg.log.run_name == text and cfg.train.max_steps == 5 and cfg.train.compile is True
    assert config_from_argv(["--model.n_layer=null"]).model.n_layer is None  # other fields: YAML scalars
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer, got 'off'"):
        config_from_argv(["--train.max_steps=off"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.max_stepz": 3}, r"unknown config key 'train.max_stepz' \(did you mean 'max_steps'\?\); valid keys here: max_steps"),
        ({"trian.lr": 1.0}, r"unknown config key 'trian' \(did you mean 'train'\?\)"),
        ({"train.max_steps": "ten"}, r"train.max_steps: expected an integer, got 'ten'"),
        ({"train.compile": "yes"}, r"train.compile: expected true or false"),
        ({"backend": "zero3"}, r"backend: 'zero3' is not one of none, manual, ddp, fsdp, zero"),
        ({"model.attention": "flash"}, r"model.attention: 'flash' is not one of naive, sdpa"),
        ({"model.preset": "gpt5"}, r"model.preset: 'gpt5' is not one of"),
        ({"parallel.bucket_cap_mb": 5.0}, r"^parallel.bucket_cap_mb has moved: use parallel.manual.bucket_cap_mb$"),
        ({"parallel.ddp_bucket_cap_mb": 5.0}, r"^parallel.ddp_bucket_cap_mb has moved: use parallel.ddp.bucket_cap_mb$"),
        ({"parallel.fsdp.reshard_after_forward": False}, r"parallel.fsdp.reshard_after_forward is a fsdp option but backend is 'none'"),
        ({"parallel.manual.bucket_cap_mb": 5.0, "backend": "ddp"}, r"parallel.manual.bucket_cap_mb is a manual option but backend is 'ddp'"),
        # zero (issue 16): an unknown stage, a zero option on another backend, bf16 communication at stage 1
        # (gloo reduces bf16 in torch 2.13, so bf16 on the CPU is no error)
        ({"backend": "zero", "parallel.zero.stage": 3}, r"zero stage must be 1 or 2, not 3 \(stage 3 is --backend fsdp\)"),
        ({"backend": "ddp", "parallel.zero.stage": 1}, r"parallel.zero.stage is a zero option but backend is 'ddp'"),
        ({"backend": "zero", "parallel.fsdp.reshard_after_forward": False}, r"parallel.fsdp.reshard_after_forward is a fsdp option but backend is 'zero'"),
        ({"backend": "zero", "parallel.zero.stage": 1, "parallel.zero.reduce_dtype": "bf16"},
         r"zero reduce_dtype=bf16 is implemented for stage 2 only"),
        ({"model.preset": "test", "data.seq_len": 65}, r"data.seq_len \(65\) exceeds model.block_size \(64\)"),
        ({"model.n_head": 5}, r"model.n_embd \(256\) must be divisible by model.n_head \(5\)"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(None, overrides)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: 3\n lr: [\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*bad.yaml at line \d+"):
        build_config(path)


def test_batch_plan_accumulation_and_impossible_combinations():
    cfg = build_config(None, {"data.batch_size": 4, "data.seq_len": 64, "train.global_batch_tokens": 4 * 64 * 2 * 3})
    plan = batch_plan(cfg, world_size=2)
    assert plan.grad_accum == 3 and plan.tokens_per_step == 1536
    with pytest.raises(ConfigError, match=r"not a multiple of batch_size\*seq_len\*world_size"):
        batch_plan(cfg, world_size=4)


def test_launch_script_prints_one_line_error_and_exits_2():
    proc = python(["launch/train.py", "--train.max_stepz=1"], check=False, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'train.max_stepz'")
