"""Tests for torch_estimator.run_config.RunConfig: TF's defaults, validation, replace() and from_env()."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from torch_estimator.run_config import RunConfig

# ---------------------------------------------------------------------------
# Defaults (TF's verified defaults, reference 3.1)
# ---------------------------------------------------------------------------


def test_defaults_match_tf():
    config = RunConfig()
    assert (
        config.model_dir,
        config.random_seed,
        config.save_summary_steps,
        config.save_checkpoints_steps,
        config.save_checkpoints_secs,
        config.keep_checkpoint_max,
        config.keep_checkpoint_every_n_hours,
        config.log_step_count_steps,
    ) == (None, None, 100, None, 600, 5, 10000, 100)


def test_default_device_precision_and_flags():
    config = RunConfig()
    assert (config.device, config.precision, config.deterministic, config.progress_bar) == ("auto", "32", False, None)


def test_default_config_shows_no_sentinel():
    assert "<unset>" not in repr(RunConfig())


def test_default_configs_compare_equal():
    assert RunConfig() == RunConfig(save_checkpoints_secs=600)


def test_fields_are_keyword_only():
    with pytest.raises(TypeError, match="positional argument"):
        RunConfig("runs/model")


# ---------------------------------------------------------------------------
# Checkpoint frequency rules
# ---------------------------------------------------------------------------


def test_giving_steps_clears_the_default_secs():
    config = RunConfig(save_checkpoints_steps=10)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (10, None)


def test_giving_secs_leaves_steps_none():
    config = RunConfig(save_checkpoints_secs=30)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (None, 30)


def test_secs_may_be_a_float():
    assert RunConfig(save_checkpoints_secs=0.5).save_checkpoints_secs == 0.5


def test_both_frequencies_given_is_an_error():
    with pytest.raises(ValueError, match=r"`save_checkpoints_steps` \(10\) and `save_checkpoints_secs` \(30\) cannot both"):
        RunConfig(save_checkpoints_steps=10, save_checkpoints_secs=30)


def test_both_none_disables_checkpointing():
    config = RunConfig(save_checkpoints_steps=None, save_checkpoints_secs=None)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (None, None)


def test_checkpointing_disabled_when_both_none():
    assert RunConfig(save_checkpoints_steps=None, save_checkpoints_secs=None).checkpointing_enabled is False


def test_steps_none_alone_disables_checkpointing():
    # Giving one field (even as None) clears the other, so the default 600 secs does not apply.
    assert RunConfig(save_checkpoints_steps=None).checkpointing_enabled is False


def test_secs_none_alone_disables_checkpointing():
    assert RunConfig(save_checkpoints_secs=None).checkpointing_enabled is False


def test_checkpointing_enabled_by_default():
    assert RunConfig().checkpointing_enabled is True


def test_checkpointing_enabled_with_steps():
    assert RunConfig(save_checkpoints_steps=5).checkpointing_enabled is True


# ---------------------------------------------------------------------------
# Validation: every field's error
# ---------------------------------------------------------------------------

# A value of the wrong kind is a TypeError, the right kind with a wrong value a ValueError (Python's convention,
# and docs/bad_inputs.md's; TF's RunConfig raised ValueError for both where it checked at all).
WRONG_TYPE = [
    ("random_seed", True, r"`random_seed` must be an int >= 0 or None; received True"),
    ("random_seed", 1.5, r"`random_seed` must be an int >= 0 or None; received 1.5"),
    ("random_seed", "42", r"`random_seed` must be an int >= 0 or None; received '42'"),
    ("save_summary_steps", True, r"`save_summary_steps` must be an int >= 0 or None; received True"),
    ("save_summary_steps", 10.0, r"`save_summary_steps` must be an int >= 0 or None; received 10.0"),
    ("save_checkpoints_steps", True, r"`save_checkpoints_steps` must be an int >= 1 or None; received True"),
    ("save_checkpoints_steps", 10.0, r"`save_checkpoints_steps` must be an int >= 1 or None; received 10.0"),
    ("save_checkpoints_secs", True, r"`save_checkpoints_secs` must be a number > 0 or None; received True"),
    ("save_checkpoints_secs", "60", r"`save_checkpoints_secs` must be a number > 0 or None; received '60'"),
    ("keep_checkpoint_max", False, r"`keep_checkpoint_max` must be an int >= 0 or None; received False"),
    ("keep_checkpoint_max", 2.0, r"`keep_checkpoint_max` must be an int >= 0 or None; received 2.0"),
    ("keep_checkpoint_every_n_hours", True, r"`keep_checkpoint_every_n_hours` must be a number > 0 or None; received True"),
    ("keep_checkpoint_every_n_hours", "1", r"`keep_checkpoint_every_n_hours` must be a number > 0 or None; received '1'"),
    ("log_step_count_steps", True, r"`log_step_count_steps` must be an int >= 1 or None; received True"),
    ("log_step_count_steps", 1.5, r"`log_step_count_steps` must be an int >= 1 or None; received 1.5"),
    ("device", 0, r"`device` must be 'auto' or a device string .*received 0"),
    ("device", None, r"`device` must be 'auto' or a device string .*received None"),
    ("precision", 32, r"`precision` must be one of \('32', 'bf16', 'fp16'\); received 32"),
    ("progress_bar", "yes", r"`progress_bar` must be True, False or None; received 'yes'"),
    ("model_dir", 3, r"`model_dir` must be a path \(str or os.PathLike\) or None; received 3"),
    ("deterministic", "yes", r"`deterministic` must be True or False; received 'yes'"),
    ("deterministic", 1, r"`deterministic` must be True or False; received 1"),
    ("progress_bar", 1, r"`progress_bar` must be True, False or None; received 1"),
    ("gradient_accumulation_steps", 2.0, r"`gradient_accumulation_steps` must be an int >= 1; received 2.0"),
    ("prefetch_batches", "2", r"`prefetch_batches` must be an int >= 0 or None; received '2'"),
    ("gradient_clip_norm", "1.0", r"`gradient_clip_norm` must be a finite number > 0 or None; received '1.0'"),
    ("distributed_timeout_secs", None, r"`distributed_timeout_secs` must be a finite number > 0; received None"),
    ("compile", 1, r"`compile` must be True, False or one of torch.compile's modes"),
    ("channels_last", "yes", r"`channels_last` must be True or False; received 'yes'"),
    ("static_graph", 0, r"`static_graph` must be True or False; received 0"),
    ("rank", 1.0, r"`rank` must be an int >= 0 or None; received 1.0"),
]
BAD_VALUE = [
    ("random_seed", -1, r"`random_seed` must be an int >= 0 or None; received -1"),
    ("save_summary_steps", -1, r"`save_summary_steps` must be an int >= 0 or None; received -1"),
    ("save_checkpoints_steps", 0, r"`save_checkpoints_steps` must be an int >= 1 or None; received 0"),
    ("save_checkpoints_steps", -5, r"`save_checkpoints_steps` must be an int >= 1 or None; received -5"),
    ("save_checkpoints_secs", 0, r"`save_checkpoints_secs` must be a number > 0 or None; received 0"),
    ("save_checkpoints_secs", -1.5, r"`save_checkpoints_secs` must be a number > 0 or None; received -1.5"),
    ("keep_checkpoint_max", -1, r"`keep_checkpoint_max` must be an int >= 0 or None; received -1"),
    ("keep_checkpoint_every_n_hours", 0, r"`keep_checkpoint_every_n_hours` must be a number > 0 or None; received 0"),
    ("keep_checkpoint_every_n_hours", -2.0, r"`keep_checkpoint_every_n_hours` must be a number > 0 or None; received -2.0"),
    ("log_step_count_steps", 0, r"`log_step_count_steps` must be an int >= 1 or None; received 0"),
    ("log_step_count_steps", -1, r"`log_step_count_steps` must be an int >= 1 or None; received -1"),
    ("device", "", r"`device` must be 'auto' or a device string .*received ''"),
    ("precision", "fp64", r"`precision` must be one of \('32', 'bf16', 'fp16'\); received 'fp64'"),
    ("model_dir", "", r"`model_dir` must be a non-empty path or None; received ''"),
    ("random_seed", 2**70, r"`random_seed` must be < 2\*\*64; received 1180591620717411303424"),
    ("device", "meta", r"`device` 'meta' holds no data \(meta tensors have shapes only\)"),
    ("device", "meta:0", r"`device` 'meta:0' holds no data"),
    ("save_checkpoints_secs", float("nan"), r"`save_checkpoints_secs` must be a number > 0 or None; received nan"),
    ("keep_checkpoint_every_n_hours", float("nan"), r"`keep_checkpoint_every_n_hours` must be a number > 0 or None; received nan"),
    ("gradient_clip_norm", float("nan"), r"`gradient_clip_norm` must be a finite number > 0 or None; received nan"),
    ("gradient_clip_norm", float("inf"), r"`gradient_clip_norm` must be a finite number > 0 or None; received inf"),
    ("gradient_clip_value", float("nan"), r"`gradient_clip_value` must be a finite number > 0 or None; received nan"),
    ("distributed_timeout_secs", float("nan"), r"`distributed_timeout_secs` must be a finite number > 0; received nan"),
    ("gradient_accumulation_steps", 0, r"`gradient_accumulation_steps` must be an int >= 1; received 0"),
    ("prefetch_batches", -1, r"`prefetch_batches` must be an int >= 0 or None; received -1"),
    ("compile", "fast", r"`compile` must be True, False or one of torch.compile's modes"),
    ("world_size", 0, r"`world_size` must be an int >= 1 or None; received 0"),
]


@pytest.mark.parametrize(("field", "value", "message"), WRONG_TYPE, ids=[f"{f}={v!r}" for f, v, _ in WRONG_TYPE])
def test_a_value_of_the_wrong_type_is_a_type_error(field, value, message):
    with pytest.raises(TypeError, match=message):
        RunConfig(**{field: value})


@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUE, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUE])
def test_a_bad_value_of_the_right_type_is_a_value_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{field: value})


def test_replace_checks_types_too():
    with pytest.raises(TypeError, match=r"`save_checkpoints_steps` must be an int >= 1 or None; received '5'"):
        RunConfig().replace(save_checkpoints_steps="5")


VALID = [
    ("random_seed", 0),
    ("save_summary_steps", 0),
    ("save_summary_steps", None),
    ("keep_checkpoint_max", 0),
    ("keep_checkpoint_max", None),
    ("keep_checkpoint_every_n_hours", 0.5),
    ("keep_checkpoint_every_n_hours", None),  # TF's: no checkpoint kept for its age
    ("log_step_count_steps", None),
    ("log_step_count_steps", 1),
    ("device", "cuda:1"),
    ("precision", "bf16"),
    ("precision", "fp16"),
    ("progress_bar", False),
    ("deterministic", True),
]


@pytest.mark.parametrize(("field", "value"), VALID, ids=[f"{f}={v!r}" for f, v in VALID])
def test_boundary_value_is_accepted(field, value):
    assert getattr(RunConfig(**{field: value}), field) == value


# ---------------------------------------------------------------------------
# model_dir
# ---------------------------------------------------------------------------


def test_pathlike_model_dir_becomes_a_str(tmp_path):
    config = RunConfig(model_dir=tmp_path / "model")
    assert config.model_dir == str(tmp_path / "model")


def test_pathlike_model_dir_is_stored_as_str_type():
    assert type(RunConfig(model_dir=pathlib.Path("runs")).model_dir) is str


# ---------------------------------------------------------------------------
# Frozen
# ---------------------------------------------------------------------------


def test_config_is_frozen():
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'model_dir'"):
        config.model_dir = "elsewhere"


# ---------------------------------------------------------------------------
# replace() (reference 3.4)
# ---------------------------------------------------------------------------


def test_replace_secs_clears_steps():
    config = RunConfig(save_checkpoints_steps=10).replace(save_checkpoints_secs=30)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (None, 30)


def test_replace_steps_clears_secs():
    config = RunConfig(save_checkpoints_secs=30).replace(save_checkpoints_steps=10)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (10, None)


def test_replace_steps_clears_the_default_secs():
    config = RunConfig().replace(save_checkpoints_steps=10)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (10, None)


def test_replace_both_frequencies_is_an_error():
    with pytest.raises(ValueError, match="cannot both be set"):
        RunConfig().replace(save_checkpoints_steps=10, save_checkpoints_secs=30)


def test_replace_steps_with_none_disables_checkpointing():
    config = RunConfig(save_checkpoints_steps=10).replace(save_checkpoints_steps=None)
    assert config.checkpointing_enabled is False


def test_replace_other_field_keeps_the_frequencies():
    config = RunConfig(save_checkpoints_steps=10).replace(keep_checkpoint_max=2)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs, config.keep_checkpoint_max) == (10, None, 2)


def test_replace_other_field_keeps_disabled_checkpointing():
    config = RunConfig(save_checkpoints_steps=None, save_checkpoints_secs=None).replace(model_dir="m")
    assert config.checkpointing_enabled is False


def test_replace_other_field_keeps_default_secs():
    assert RunConfig().replace(random_seed=3).save_checkpoints_secs == 600


def test_replace_returns_a_new_config():
    config = RunConfig(model_dir="a")
    config.replace(model_dir="b")
    assert config.model_dir == "a"


def test_replace_unknown_field_is_an_error():
    with pytest.raises(ValueError, match=r"RunConfig.replace: cannot replace \['task_type'\]; allowed fields are"):
        RunConfig().replace(task_type="chief")


def test_replace_keep_every_n_hours_with_none():
    config = RunConfig(keep_checkpoint_every_n_hours=2.0).replace(keep_checkpoint_every_n_hours=None)
    assert config.keep_checkpoint_every_n_hours is None


def test_replace_validates_again():
    with pytest.raises(ValueError, match="`keep_checkpoint_max` must be an int >= 0 or None; received -1"):
        RunConfig().replace(keep_checkpoint_max=-1)


# ---------------------------------------------------------------------------
# from_env()
# ---------------------------------------------------------------------------


def test_from_env_reads_model_dir(monkeypatch):
    monkeypatch.setenv("TORCH_ESTIMATOR_MODEL_DIR", "/tmp/env-model")
    assert RunConfig.from_env().model_dir == "/tmp/env-model"


def test_from_env_overrides_win(monkeypatch):
    monkeypatch.setenv("TORCH_ESTIMATOR_MODEL_DIR", "/tmp/env-model")
    assert RunConfig.from_env(model_dir="/tmp/explicit").model_dir == "/tmp/explicit"


def test_from_env_without_variable_has_no_model_dir(monkeypatch):
    monkeypatch.delenv("TORCH_ESTIMATOR_MODEL_DIR", raising=False)
    assert RunConfig.from_env().model_dir is None


def test_from_env_ignores_an_empty_variable(monkeypatch):
    monkeypatch.setenv("TORCH_ESTIMATOR_MODEL_DIR", "")
    assert RunConfig.from_env().model_dir is None


def test_from_env_passes_other_overrides(monkeypatch):
    monkeypatch.delenv("TORCH_ESTIMATOR_MODEL_DIR", raising=False)
    config = RunConfig.from_env(save_checkpoints_steps=7)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (7, None)


def test_constructor_does_not_read_the_environment(monkeypatch):
    monkeypatch.setenv("TORCH_ESTIMATOR_MODEL_DIR", "/tmp/env-model")
    assert RunConfig().model_dir is None
