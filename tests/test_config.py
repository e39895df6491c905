"""Config validation: every impossible config fails before compute with a message naming the key."""

import importlib.util
import os

import pytest

from lmlab import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpt_config(arg="size=tiny"):
  spec = importlib.util.spec_from_file_location("gpt", os.path.join(ROOT, "experiments", "gpt.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_experiment_sizes_are_valid(size):
  cfg = gpt_config(f"size={size}")
  config_lib.validate(cfg, num_devices=8)
  assert cfg.name == f"gpt_{size}"


@pytest.mark.parametrize("change, num_devices, message", [
    (lambda c: c.optim.__setattr__("lrr", 1.0), 1, "Unknown config key config.optim.lrr. Did you mean config.optim.lr"),
    (lambda c: c.model.__setattr__("num_heads", 3), 1, "config.model.d_model = 64 is not divisible by config.model.num_heads = 3"),
    (lambda c: c.model.__setattr__("positions", "alibi"), 1, "config.model.positions = 'alibi' is not one of"),
    (lambda c: c.data.__setattr__("seq_len", 0), 1, "config.data.seq_len = 0 must be > 0"),
    (lambda c: c.model.__setattr__("dropout_rate", 1.0), 1, "config.model.dropout_rate"),
    (lambda c: c.sample.__setattr__("top_p", 0.0), 1, "config.sample.top_p"),
    (lambda c: c.optim.__setattr__("grad_accum_steps", 3), 1, "config.optim.grad_accum_steps = 3"),
    (lambda c: c.optim.__setattr__("warmup_steps", 1000), 1, "config.optim.warmup_steps = 1000 exceeds"),
    (lambda c: c.data.__setattr__("source", "text_files"), 1, "config.data.text_glob"),
    (lambda c: c.tokenizer.__setattr__("vocab_size", 4), 1, "config.tokenizer.vocab_size = 4"),
    (lambda c: c.mesh.__setattr__("fsdp", 3), 8, "fixed axes (3) must divide the device count"),
    (lambda c: (c.mesh.__setattr__("data", 2), c.mesh.__setattr__("fsdp", 2)), 8, "does not match the 8 devices"),
    (lambda c: (c.mesh.__setattr__("fsdp", -1), c.mesh.__setattr__("data", -1)), 8, "Only one of"),
    (lambda c: c.data.__setattr__("batch_size", 12), 8, "not divisible by the data-parallel size"),
    (lambda c: (c.mesh.__setattr__("tensor", 4), c.mesh.__setattr__("data", 2)), 8, "config.mesh.tensor = 4 must divide"),
])
def test_validation_errors(change, num_devices, message):
  cfg = gpt_config()
  config_lib.validate(cfg, num_devices)  # valid before the change
  change(cfg)
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(cfg, num_devices)
  assert message in str(err.value)


def test_wrong_type_from_a_saved_config():
  # ConfigDict refuses a wrong type on assignment; a config rebuilt from JSON is checked by validate().
  raw = gpt_config().to_dict()
  raw["model"]["num_layers"] = "4"
  with pytest.raises(config_lib.ConfigError, match="config.model.num_layers = '4' is a str, expected int"):
    config_lib.validate(config_lib.ConfigDict(raw))


def test_rotary_needs_even_head_dim():
  cfg = gpt_config("size=tiny,positions=rotary")
  cfg.model.d_model, cfg.model.num_heads = 66, 2  # head dim 33
  with pytest.raises(config_lib.ConfigError, match="even head dim"):
    config_lib.validate(cfg)


def test_mesh_shape_resolves_minus_one():
  cfg = gpt_config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 2, 2
  assert config_lib.mesh_shape(cfg, 8) == (2, 2, 2)


def test_parse_arg_rejects_unknown_and_mistyped_options():
  assert gpt_config("size=tiny,positions=rotary").model.positions == "rotary"
  with pytest.raises(config_lib.ConfigError, match="Unknown experiment option 'sise=tiny'"):
    gpt_config("sise=tiny")
  with pytest.raises(config_lib.ConfigError, match="Unknown size 'huge'"):
    gpt_config("size=huge")
  with pytest.raises(config_lib.ConfigError, match="takes a int"):
    config_lib.parse_arg("n=x", n=1)
