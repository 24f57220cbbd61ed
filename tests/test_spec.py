"""Tests for torch_estimator.spec: ModeKeys and EstimatorSpec's per-mode validation (TF's model_fn.py rules)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from torch_estimator import metrics
from torch_estimator.export import PredictOutput, RegressionOutput
from torch_estimator.hooks import Hook
from torch_estimator.spec import EstimatorSpec, ModeKeys

LOSS = torch.tensor(0.5)
PREDICTIONS = {"classes": torch.tensor([0, 1])}


class TinyMetric:
    """The torchmetrics protocol: update/compute/reset."""

    def update(self, *args):
        pass

    def compute(self):
        return torch.tensor(1.0)

    def reset(self):
        pass


class DuckHook:
    """A hook by protocol, not by class."""

    def begin(self):
        pass

    def before_run(self, run_context):
        return None

    def after_run(self, run_context, run_values):
        pass

    def end(self, run_context):
        pass


def accuracy_update():
    return metrics.accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))


# ---------------------------------------------------------------------------
# ModeKeys
# ---------------------------------------------------------------------------


def test_mode_keys_use_tf_string_values():
    assert (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT) == ("train", "eval", "infer")


def test_mode_keys_all_lists_the_three_modes():
    assert set(ModeKeys.ALL) == {ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT}


# ---------------------------------------------------------------------------
# mode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["training", "TRAIN", "predict", None, 0])
def test_invalid_mode_is_rejected(mode):
    with pytest.raises(ValueError, match="`mode` must be one of ModeKeys.TRAIN/EVAL/PREDICT"):
        EstimatorSpec(mode, loss=LOSS, predictions=PREDICTIONS)


def test_invalid_mode_error_shows_the_received_value():
    with pytest.raises(ValueError, match="received 'training'"):
        EstimatorSpec("training", loss=LOSS)


# ---------------------------------------------------------------------------
# Required fields per mode
# ---------------------------------------------------------------------------


def test_train_needs_loss():
    with pytest.raises(ValueError, match=r"EstimatorSpec\(mode='train'\) needs `loss`"):
        EstimatorSpec(ModeKeys.TRAIN)


def test_eval_needs_loss():
    with pytest.raises(ValueError, match=r"EstimatorSpec\(mode='eval'\) needs `loss`"):
        EstimatorSpec(ModeKeys.EVAL, predictions=PREDICTIONS)


def test_predict_needs_predictions():
    with pytest.raises(ValueError, match=r"EstimatorSpec\(mode='infer'\) needs `predictions`"):
        EstimatorSpec(ModeKeys.PREDICT, loss=LOSS)


def test_train_does_not_need_train_op():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS)
    assert spec.train_op is None


def test_eval_with_loss_only_is_valid():
    spec = EstimatorSpec(ModeKeys.EVAL, loss=LOSS)
    assert spec.loss is LOSS


def test_predict_does_not_need_loss():
    spec = EstimatorSpec(ModeKeys.PREDICT, predictions=PREDICTIONS)
    assert spec.loss is None


def test_train_does_not_need_predictions():
    assert EstimatorSpec(ModeKeys.TRAIN, loss=LOSS).predictions is None


@pytest.mark.parametrize("mode", ModeKeys.ALL)
def test_the_same_full_spec_is_valid_in_every_mode(mode):
    spec = EstimatorSpec(
        mode,
        loss=LOSS,
        predictions=PREDICTIONS,
        train_op=lambda loss: None,
        eval_metric_ops={"accuracy": accuracy_update()},
    )
    assert spec.mode == mode


# ---------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------


def test_scalar_loss_is_kept_as_is():
    assert EstimatorSpec(ModeKeys.EVAL, loss=LOSS).loss is LOSS


def test_loss_of_shape_1_is_reshaped_to_a_scalar():
    spec = EstimatorSpec(ModeKeys.EVAL, loss=torch.tensor([0.25]))
    assert spec.loss.shape == torch.Size([])
    assert spec.loss.item() == 0.25


def test_reshaped_loss_keeps_its_gradient():
    weight = torch.tensor([2.0], requires_grad=True)
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=weight * 3.0)
    spec.loss.backward()
    assert weight.grad.tolist() == [3.0]


def test_loss_of_shape_2_is_rejected():
    with pytest.raises(ValueError, match=r"`loss` must be a scalar .*received shape \[2\]\. Reduce it"):
        EstimatorSpec(ModeKeys.TRAIN, loss=torch.tensor([0.5, 0.5]))


def test_empty_loss_is_rejected():
    with pytest.raises(ValueError, match=r"`loss` must be a scalar .*received shape \[0\]"):
        EstimatorSpec(ModeKeys.EVAL, loss=torch.tensor([]))


@pytest.mark.parametrize("loss", [0.5, 1, [0.5], "loss"])
def test_loss_that_is_not_a_tensor_is_rejected(loss):
    with pytest.raises(TypeError, match="`loss` must be a scalar Tensor; received"):
        EstimatorSpec(ModeKeys.TRAIN, loss=loss)


def test_loss_type_error_names_the_received_type():
    with pytest.raises(TypeError, match="received float 0.5"):
        EstimatorSpec(ModeKeys.TRAIN, loss=0.5)


def test_loss_is_checked_in_predict_too():
    with pytest.raises(TypeError, match="`loss` must be a scalar Tensor"):
        EstimatorSpec(ModeKeys.PREDICT, predictions=PREDICTIONS, loss=0.5)


# ---------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------


def test_tensor_predictions_are_accepted():
    predictions = torch.tensor([1, 2])
    assert EstimatorSpec(ModeKeys.PREDICT, predictions=predictions).predictions is predictions


def test_dict_predictions_are_accepted():
    assert EstimatorSpec(ModeKeys.PREDICT, predictions=PREDICTIONS).predictions is PREDICTIONS


@pytest.mark.parametrize("predictions", [[torch.tensor([1])], (torch.tensor([1]),), 3, "classes"])
def test_predictions_that_are_not_a_tensor_or_dict_are_rejected(predictions):
    with pytest.raises(TypeError, match="`predictions` must be a Tensor or a dict of Tensors; received"):
        EstimatorSpec(ModeKeys.PREDICT, predictions=predictions)


def test_prediction_with_non_tensor_value_is_rejected():
    with pytest.raises(TypeError, match=r"`predictions\['classes'\]` must be a Tensor; received list"):
        EstimatorSpec(ModeKeys.PREDICT, predictions={"classes": [0, 1]})


def test_prediction_with_non_str_key_is_rejected():
    with pytest.raises(TypeError, match="`predictions` keys must be str or tuples of str; received key 0"):
        EstimatorSpec(ModeKeys.PREDICT, predictions={0: torch.tensor([1])})


def test_prediction_tuple_keys_are_accepted_as_tf_multi_head_makes_them():
    predictions = {("head1", "logits"): torch.zeros(2, 1), ("head2", "logits"): torch.zeros(2, 3)}
    assert EstimatorSpec(ModeKeys.PREDICT, predictions=predictions).predictions is predictions
    with pytest.raises(TypeError, match=r"keys must be str or tuples of str; received key \('head1', 1\)"):
        EstimatorSpec(ModeKeys.PREDICT, predictions={("head1", 1): torch.zeros(2)})


def test_predictions_are_validated_outside_predict():
    with pytest.raises(TypeError, match=r"`predictions\['p'\]` must be a Tensor"):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, predictions={"p": 1.0})


# ---------------------------------------------------------------------------
# train_op
# ---------------------------------------------------------------------------


def test_callable_train_op_is_accepted():
    def train_op(loss):
        return None

    assert EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, train_op=train_op).train_op is train_op


@pytest.mark.parametrize("train_op", [torch.tensor(1.0), "step", 1])
def test_non_callable_train_op_is_rejected(train_op):
    with pytest.raises(TypeError, match=r"`train_op` must be a callable train_op\(loss\), or omitted"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, train_op=train_op)


# ---------------------------------------------------------------------------
# eval_metric_ops
# ---------------------------------------------------------------------------


def test_metric_update_from_metrics_module_is_accepted():
    update = accuracy_update()
    spec = EstimatorSpec(ModeKeys.EVAL, loss=LOSS, eval_metric_ops={"accuracy": update})
    assert spec.eval_metric_ops["accuracy"] is update


def test_object_with_update_compute_reset_is_accepted():
    metric = TinyMetric()
    spec = EstimatorSpec(ModeKeys.EVAL, loss=LOSS, eval_metric_ops={"tiny": metric})
    assert spec.eval_metric_ops["tiny"] is metric


@pytest.mark.parametrize("value", [torch.tensor(0.5), (torch.tensor(0.5), torch.tensor(0.5)), 0.5, "accuracy"])
def test_metric_that_is_not_a_metric_is_rejected(value):
    with pytest.raises(TypeError, match=r"`eval_metric_ops\['m'\]` must be a metric from torch_estimator.metrics"):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, eval_metric_ops={"m": value})


def test_object_missing_reset_is_not_a_metric():
    class NoReset:
        def update(self):
            pass

        def compute(self):
            return 0

    with pytest.raises(TypeError, match=r"`eval_metric_ops\['m'\]` must be a metric"):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, eval_metric_ops={"m": NoReset()})


@pytest.mark.parametrize("value", [[accuracy_update()], accuracy_update(), "accuracy"])
def test_eval_metric_ops_that_is_not_a_dict_is_rejected(value):
    with pytest.raises(TypeError, match="`eval_metric_ops` must be a dict of name to metric; received"):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, eval_metric_ops=value)


def test_eval_metric_ops_with_non_str_key_is_rejected():
    with pytest.raises(TypeError, match="`eval_metric_ops` keys must be str; received 1"):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, eval_metric_ops={1: accuracy_update()})


# ---------------------------------------------------------------------------
# export_outputs
# ---------------------------------------------------------------------------


def test_export_outputs_dict_is_accepted():
    outputs = {"serving_default": PredictOutput(PREDICTIONS), "regression": RegressionOutput(torch.zeros(2, 1))}
    assert EstimatorSpec(ModeKeys.PREDICT, predictions=PREDICTIONS, export_outputs=outputs).export_outputs is outputs


@pytest.mark.parametrize("value", [torch.zeros(4, 1), {"y": torch.zeros(4, 1)}, object()])
def test_export_outputs_value_that_is_not_an_export_output_is_rejected_at_construction(value):
    # TF's: the spec checks each value's class when it is built, not when it is exported.
    with pytest.raises(TypeError, match=r"(?s)`export_outputs\['predict'\]` must be an ExportOutput .*Wrap tensors as PredictOutput"):
        EstimatorSpec(ModeKeys.PREDICT, predictions=PREDICTIONS,
                      export_outputs={"serving_default": PredictOutput(PREDICTIONS), "predict": value})


def test_export_outputs_that_is_not_a_dict_is_rejected():
    with pytest.raises(TypeError, match="`export_outputs` must be a dict of signature name to export output"):
        EstimatorSpec(ModeKeys.PREDICT, predictions=PREDICTIONS, export_outputs=[object()])


# ---------------------------------------------------------------------------
# Hook lists
# ---------------------------------------------------------------------------

HOOK_FIELDS = ["training_chief_hooks", "training_hooks", "evaluation_hooks", "prediction_hooks"]


@pytest.mark.parametrize("field", HOOK_FIELDS)
def test_hook_list_is_converted_to_a_tuple(field):
    hook = Hook()
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, **{field: [hook]})
    assert getattr(spec, field) == (hook,)


@pytest.mark.parametrize("field", HOOK_FIELDS)
def test_hook_fields_default_to_empty_tuples(field):
    assert getattr(EstimatorSpec(ModeKeys.TRAIN, loss=LOSS), field) == ()


def test_hook_by_protocol_is_accepted():
    hook = DuckHook()
    assert EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, training_hooks=[hook]).training_hooks == (hook,)


@pytest.mark.parametrize("field", HOOK_FIELDS)
def test_object_lacking_hook_methods_is_rejected(field):
    with pytest.raises(TypeError, match=rf"`{field}` must contain hooks .*lacks begin, before_run, after_run, end"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, **{field: [object()]})


def test_hook_error_names_only_the_missing_methods():
    class HalfHook:
        def begin(self):
            pass

        def before_run(self, run_context):
            return None

    with pytest.raises(TypeError, match=r"which lacks after_run, end\."):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, training_hooks=[HalfHook()])


@pytest.mark.parametrize("hooks", [Hook(), "hooks", {"h": Hook()}])
def test_hooks_that_are_not_a_list_are_rejected(hooks):
    with pytest.raises(TypeError, match="`training_hooks` must be a list of hooks; received"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, training_hooks=hooks)


def test_none_hooks_become_an_empty_tuple():
    assert EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, training_hooks=None).training_hooks == ()


def test_empty_hook_list_becomes_a_tuple():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, training_hooks=[])
    assert spec.training_hooks + spec.training_chief_hooks == ()


def test_empty_dict_of_hooks_is_rejected():
    with pytest.raises(TypeError, match="`training_hooks` must be a list of hooks"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, training_hooks={})


# ---------------------------------------------------------------------------
# fetches
# ---------------------------------------------------------------------------


def test_fetches_dict_of_tensors_is_accepted():
    fetches = {"lr": torch.tensor(0.1)}
    assert EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, fetches=fetches).fetches is fetches


def test_fetches_tensor_is_rejected():
    with pytest.raises(TypeError, match="`fetches` must be a dict of str to Tensor; received Tensor"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, fetches=torch.tensor(0.1))


def test_fetches_with_non_tensor_value_is_rejected():
    with pytest.raises(TypeError, match=r"`fetches\['lr'\]` must be a Tensor; received float 0.1"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, fetches={"lr": 0.1})


def test_fetches_with_non_str_key_is_rejected():
    with pytest.raises(TypeError, match="`fetches` keys must be str; received key 1"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, fetches={1: torch.tensor(0.1)})


# ---------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------


def test_summaries_dict_is_accepted():
    summaries = {"loss/raw": torch.tensor(0.5), "weights": torch.zeros(3), "lazy": lambda: torch.tensor(1.0)}
    assert EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, summaries=summaries).summaries is summaries


def test_summaries_that_is_not_a_dict_is_rejected():
    with pytest.raises(TypeError, match="`summaries` must be a dict of str tag to value; received list"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, summaries=[torch.tensor(0.5)])


def test_summaries_with_non_str_tag_is_rejected():
    with pytest.raises(TypeError, match="`summaries` must be a dict of str tag to value"):
        EstimatorSpec(ModeKeys.TRAIN, loss=LOSS, summaries={1: torch.tensor(0.5)})


# ---------------------------------------------------------------------------
# Immutability and replace()
# ---------------------------------------------------------------------------


def test_spec_is_frozen():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'loss'"):
        spec.loss = torch.tensor(1.0)


def test_replace_changes_a_field():
    new_loss = torch.tensor(2.0)
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS).replace(loss=new_loss)
    assert spec.loss is new_loss


def test_replace_leaves_the_original_unchanged():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS)
    spec.replace(loss=torch.tensor(2.0))
    assert spec.loss is LOSS


def test_replace_cannot_change_mode():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS)
    with pytest.raises(ValueError, match="The mode of an EstimatorSpec cannot be changed \\(from 'train'\\)"):
        spec.replace(mode=ModeKeys.EVAL)


def test_replace_with_the_same_mode_is_allowed():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS)
    assert spec.replace(mode=ModeKeys.TRAIN).mode == ModeKeys.TRAIN


def test_replace_validates_again():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS)
    with pytest.raises(ValueError, match=r"EstimatorSpec\(mode='train'\) needs `loss`"):
        spec.replace(loss=None)


def test_replace_reshapes_a_loss_of_shape_1():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS).replace(loss=torch.tensor([3.0]))
    assert spec.loss.shape == torch.Size([])


# ---------------------------------------------------------------------------
# Validation is remembered per structure (the training loop builds a spec per step)
# ---------------------------------------------------------------------------


def test_a_remembered_structure_does_not_hide_errors_of_another():
    for _ in range(2):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, predictions={"p": torch.ones(2)}, eval_metric_ops={"m": TinyMetric()})
    with pytest.raises(TypeError, match=r"`predictions\['p'\]` must be a Tensor; received int 1"):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, predictions={"p": 1}, eval_metric_ops={"m": TinyMetric()})
    with pytest.raises(TypeError, match=r"`eval_metric_ops\['m'\]` must be a metric"):
        EstimatorSpec(ModeKeys.EVAL, loss=LOSS, predictions={"p": torch.ones(2)}, eval_metric_ops={"m": 3})
    with pytest.raises(ValueError, match="needs `loss`"):
        EstimatorSpec(ModeKeys.TRAIN, predictions={"p": torch.ones(2)})


def test_mappings_other_than_dicts_are_checked_every_time():
    import types

    EstimatorSpec(ModeKeys.PREDICT, predictions=types.MappingProxyType({"p": torch.ones(2)}))
    with pytest.raises(TypeError, match=r"`predictions\['p'\]` must be a Tensor"):
        EstimatorSpec(ModeKeys.PREDICT, predictions=types.MappingProxyType({"p": "x"}))


def test_a_loss_of_shape_one_is_reshaped_every_time():
    for _ in range(3):
        assert EstimatorSpec(ModeKeys.TRAIN, loss=torch.tensor([0.5]), predictions=PREDICTIONS).loss.shape == torch.Size([])
    with pytest.raises(ValueError, match=r"must be a scalar \(shape \[\] or \[1\]\); received shape \[2\]"):
        EstimatorSpec(ModeKeys.TRAIN, loss=torch.ones(2), predictions=PREDICTIONS)


def test_the_plain_training_spec_is_still_checked():
    spec = EstimatorSpec(ModeKeys.TRAIN, loss=LOSS)
    assert spec.loss is LOSS and spec.training_hooks == () and dataclasses.replace(spec).loss is LOSS
    with pytest.raises(ValueError, match="must be a scalar"):
        EstimatorSpec(ModeKeys.TRAIN, loss=torch.ones(3))
    with pytest.raises(TypeError, match="`loss` must be a scalar Tensor; received float 0.5"):
        EstimatorSpec(ModeKeys.TRAIN, loss=0.5)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        EstimatorSpec("training", loss=LOSS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.loss = LOSS  # type: ignore[misc]
