"""Config: presets, YAML + dotted overrides, and one ConfigError naming the key for every mistake."""

from __future__ import annotations

import pytest

from conftest import TINY_YAML
from minilm.config import (
    Config, ModelConfig, config_from_dict, load_config, parse_overrides, preset_names, presets,
)
from minilm.errors import ConfigError

DATA = ["data.train_files=data/tinyshakespeare.txt"]


def build(*overrides: str) -> Config:
    return load_config(None, [*DATA, *overrides])


# ---------------------------------------------------------------------------------------------
# presets, files, overrides


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_with_its_values(name):
    bidirectional = presets()[name].get("causal", True) is False
    cfg = build(f"model.preset={name}", *(["tokenizer.kind=wordpiece"] if bidirectional else []))
    for key, value in presets()[name].items():
        assert getattr(cfg.model, key) == value
    assert cfg.model.n_embd % cfg.model.n_head == 0
    assert name in preset_names()


def test_repo_tiny_config_loads():
    cfg = load_config(TINY_YAML)
    assert cfg.model.preset == "gpt-tiny"
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (2, 2, 64, 64)
    assert cfg.data.train_files == ["data/tinyshakespeare.txt"]
    assert cfg.train.max_steps == 200 and cfg.train.batch_size == 32 and cfg.train.warmup_steps == 20
    assert cfg.train.out_dir == "runs/gpt-char-tiny"
    assert ModelConfig().n_layer == 4  # defaults are untouched by loading a preset


def test_overrides_beat_yaml_which_beats_preset():
    cfg = load_config(TINY_YAML, ["model.n_layer=3", "train.lr=1e-3", "train.min_lr=1e-5"])
    assert cfg.model.n_layer == 3  # override over the preset's 2
    assert cfg.model.n_embd == 64  # still from the preset
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 200  # from the YAML file


def test_yaml_file_value_beats_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: gpt-tiny\n  n_embd: 96\n  n_head: 3\ndata:\n  train_files: x.txt\n")
    cfg = load_config(path)
    assert (cfg.model.n_embd, cfg.model.n_head, cfg.model.n_layer) == (96, 3, 2)
    assert cfg.data.train_files == ["x.txt"]  # a single path becomes a one-element list


def test_yaml11_exponent_strings_become_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  min_lr: 1e-5\n  weight_decay: 0\ndata:\n  train_files: [a.txt]\n")
    cfg = load_config(path)
    assert cfg.train.lr == pytest.approx(1e-3) and type(cfg.train.lr) is float
    assert cfg.train.min_lr == pytest.approx(1e-5) and type(cfg.train.min_lr) is float
    assert cfg.train.weight_decay == 0.0 and type(cfg.train.weight_decay) is float


def test_parse_overrides_nested_and_typed():
    out = parse_overrides([
        "model.n_layer=3", "train.lr=1e-3", "model.bias=false", "data.train_files=[a.txt,b.txt]",
        "log.run_name=my run", "model.init_from=",
    ])
    assert out["model"]["n_layer"] == 3
    assert out["model"]["bias"] is False
    assert out["data"]["train_files"] == ["a.txt", "b.txt"]
    assert out["log"]["run_name"] == "my run"
    assert out["model"]["init_from"] == ""
    cfg = build("train.lr=1e-3", "train.min_lr=2e-4", "model.n_layer=3", "model.bias=false")
    assert cfg.train.lr == pytest.approx(1e-3) and type(cfg.train.lr) is float
    assert cfg.model.n_layer == 3 and cfg.model.bias is False


def test_float_given_as_integral_number_is_accepted_for_int():
    assert build("model.n_layer=3.0").model.n_layer == 3


def test_to_dict_round_trips():
    cfg = build("model.n_layer=3", "train.lr=2e-3")
    assert config_from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------------------------
# errors: each one a ConfigError whose message names the key


def expect_error(*overrides: str, names: list[str] | str) -> str:
    with pytest.raises(ConfigError) as info:
        build(*overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for name in [names] if isinstance(names, str) else names:
        assert name in msg, f"{name!r} not in {msg!r}"
    return msg


def test_unknown_key_lists_valid_keys():
    msg = expect_error("model.n_layers=3", names="model.n_layers")
    assert "valid keys" in msg
    for key in ("n_layer", "n_head", "n_embd", "block_size", "dropout"):
        assert key in msg


def test_unknown_section():
    msg = expect_error("optim.lr=1e-3", names="optim")
    for section in ("model", "tokenizer", "data", "train", "log"):
        assert section in msg


def test_unknown_section_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="trainer"):
        load_config(path)


@pytest.mark.parametrize("override,key", [
    ("model.n_layer=abc", "model.n_layer"),
    ("model.n_layer=true", "model.n_layer"),  # bool is not an int
    ("model.n_layer=2.5", "model.n_layer"),
    ("train.lr=fast", "train.lr"),
    ("train.lr=true", "train.lr"),
    ("model.bias=1", "model.bias"),
    ("model.bias=yes please", "model.bias"),
    ("model.norm=[pre]", "model.norm"),
    ("data.train_files={a: 1}", "data.train_files"),
])
def test_wrong_type(override, key):
    expect_error(override, names=key)


@pytest.mark.parametrize("override,key", [
    ("model.n_layer=0", "model.n_layer"),
    ("model.n_layer=-2", "model.n_layer"),
    ("model.n_head=0", "model.n_head"),
    ("model.n_embd=-64", "model.n_embd"),
    ("model.block_size=0", "model.block_size"),
    ("model.vocab_size=-1", "model.vocab_size"),
    ("model.d_ff=-1", "model.d_ff"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.max_steps=-5", "train.max_steps"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.eval_interval=0", "train.eval_interval"),
    ("train.warmup_steps=-1", "train.warmup_steps"),
    ("train.lr=0", "train.lr"),
    ("tokenizer.vocab_size=0", "tokenizer.vocab_size"),
    ("log.log_interval=0", "log.log_interval"),
    ("data.val_fraction=0", "data.val_fraction"),
    ("data.val_fraction=1.0", "data.val_fraction"),
])
def test_non_positive_sizes(override, key):
    expect_error(override, names=key)


def test_n_embd_not_divisible_by_n_head():
    expect_error("model.n_embd=64", "model.n_head=3", names=["model.n_embd", "model.n_head"])


def test_min_lr_above_lr():
    expect_error("train.lr=1e-4", "train.min_lr=1e-3", names="train.min_lr")


@pytest.mark.parametrize("value", ["1.0", "1.5", "-0.1"])
def test_dropout_out_of_range(value):
    expect_error(f"model.dropout={value}", names="model.dropout")


@pytest.mark.parametrize("override,key", [
    ("model.norm=mid", "model.norm"),
    ("model.position=rotary", "model.position"),
    ("model.position_init=zeros", "model.position_init"),
    ("model.activation=relu", "model.activation"),
    ("tokenizer.kind=sentencepiece", "tokenizer.kind"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("log.wandb=maybe", "log.wandb"),
])
def test_bad_choice(override, key):
    expect_error(override, names=key)


def test_type_vocab_with_causal_model():
    expect_error("model.type_vocab_size=2", names="model.type_vocab_size")


def test_unknown_preset_lists_presets():
    msg = expect_error("model.preset=gpt5", names=["model.preset", "gpt5"])
    for name in presets():
        assert name in msg


def test_no_training_data():
    with pytest.raises(ConfigError, match="data.train_files"):
        load_config(None, [])


def test_malformed_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  n_layer: 2\n n_head: [4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "YAML" in str(info.value)


def test_yaml_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- train\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(path)


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)


@pytest.mark.parametrize("item", ["model.n_layer", "n_layer=4", "model.n_layer.x=4", ".n_layer=4", "model.=4", "=4"])
def test_bad_override_syntax(item):
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert repr(item) in str(info.value)
    with pytest.raises(ConfigError):
        build(item)


def test_config_error_is_a_minilm_error():
    from minilm.errors import MinilmError

    assert issubclass(ConfigError, MinilmError)


@pytest.mark.parametrize("path", sorted((TINY_YAML.parent).glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_names_shipped_data(path):
    cfg = load_config(path)
    root = TINY_YAML.parent.parent
    for pattern in [*cfg.data.train_files, *cfg.data.val_files]:
        assert (root / pattern).exists(), f"{path.name}: {pattern} is not in the repository"


# ---------------------------------------------------------------------------------------------
# train.task: one key picks the task; configs and run directories written before it keep their meaning


@pytest.mark.parametrize("preset,task", [(None, "causal_lm"), ("bert-tiny", "masked_lm")])
@pytest.mark.parametrize("written", [None, "pretrain"], ids=["unset", "old-name"])
def test_a_pretraining_config_without_a_task_name_gets_its_models_task(preset, task, written):
    extra = ([f"model.preset={preset}", "tokenizer.kind=wordpiece"] if preset else []) + (
        [f"train.task={written}"] if written else [])
    cfg = build(*extra)
    assert cfg.train.task == task
    assert config_from_dict(cfg.to_dict()).train.task == task  # and config.json names it


@pytest.mark.parametrize("path", sorted((TINY_YAML.parent).glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_names_a_registered_task_its_model_fits(path):
    from minilm.tasks import TASKS

    cfg = load_config(path)
    assert cfg.train.task in TASKS
    TASKS[cfg.train.task].check(cfg)


def test_the_task_must_fit_the_attention():
    from minilm.tasks import get_task

    cfg = build("train.task=causal_lm", "model.preset=bert-tiny", "tokenizer.kind=wordpiece")
    with pytest.raises(ConfigError, match="train.task=causal_lm needs model.causal=true.*train.task=masked_lm"):
        get_task(cfg.train.task).check(cfg)


# the README's recurrent commands -> the config file that ships each recipe
RECURRENT_RECIPES = {
    "shakespeare-lstm": ("shakespeare-char-cpu", "model.arch=lstm model.n_layer=2 model.hidden_size=192 "
                         "train.max_steps=5325 train.eval_interval=5325 train.out_dir=runs/shakespeare-lstm"),
    "shakespeare-sru": ("shakespeare-char-cpu", "model.arch=sru model.n_layer=8 model.hidden_size=160 "
                        "model.layer_norm=true train.max_steps=4752 train.eval_interval=4752 "
                        "train.out_dir=runs/shakespeare-sru"),
    "sst2-bilstm": ("finetune-sst2", "train.task=classify model.arch=lstm model.bidirectional=true model.n_layer=1 "
                    "train.out_dir=runs/sst2-bilstm"),
    "sst2-bisru": ("finetune-sst2", "train.task=classify model.arch=sru model.bidirectional=true model.n_layer=2 "
                   "model.layer_norm=true train.out_dir=runs/sst2-bisru"),
    "g2p-lstm": ("g2p-cmudict", "model.arch=lstm model.bidirectional=true model.encoder_layers=2 model.n_layer=1 "
                 "train.out_dir=runs/g2p-lstm"),
    "g2p-sru": ("g2p-cmudict", "model.arch=sru model.bidirectional=true model.encoder_layers=2 model.n_layer=1 "
                "model.layer_norm=true train.out_dir=runs/g2p-sru"),
}


@pytest.mark.parametrize("name", RECURRENT_RECIPES)
def test_each_recurrent_recipe_file_is_its_readme_command(name, capsys):
    base, overrides = RECURRENT_RECIPES[name]
    root = TINY_YAML.parent
    assert load_config(root / f"{name}.yaml") == load_config(root / f"{base}.yaml", overrides.split())
    header = (root / f"{name}.yaml").read_text().split("\nmodel:")[0]
    assert "not yet measured" not in header and "measured" in header.lower()  # each recipe states its measured result
