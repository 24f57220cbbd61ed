"""serving/rest.py on its own (no HTTP): JSON <-> tensors for TF Serving's formats and the Open Inference
Protocol, b64 values, classification and regression results, metadata."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

from torch_estimator.serving import rest
from torch_estimator.serving.rest import ServingError

from .serving_support import fake_model


def _b64(array: np.ndarray) -> dict[str, str]:
    return {"b64": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()}


def _model(dtype="float32", shape=(-1, 2), names=("x",)):
    return fake_model(lambda i: i, inputs={n: {"dtype": dtype, "shape": list(shape)} for n in names})


# ----------------------------------------------------------------------------------------------------------
# Requests


def test_a_row_of_b64_fills_the_rest_of_the_shape():
    images = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    request = rest.parse_predict({"instances": [_b64(image) for image in images]}, _model("uint8", (-1, 2, 2)))
    assert request.inputs["x"].tolist() == images.tolist() and request.row_format


def test_a_list_of_b64_strings_fills_rows_in_the_columnar_format():
    images = np.arange(8, dtype=np.uint8).reshape(2, 4)
    request = rest.parse_predict({"inputs": {"x": [_b64(row) for row in images]}}, _model("uint8", (-1, 4)))
    assert request.inputs["x"].tolist() == images.tolist() and not request.row_format


def test_b64_carries_raw_little_endian_floats():
    values = np.array([[1.5, -2.25], [3.0, 0.1]], dtype=np.float32)
    request = rest.parse_predict({"inputs": _b64(values)}, _model("float32", (-1, 2)))
    assert request.inputs["x"].dtype == torch.float32 and request.inputs["x"].numpy().tolist() == values.tolist()


def test_b64_without_padding_is_accepted():
    text = base64.b64encode(b"\x01\x02\x03\x04").decode().rstrip("=")
    assert rest.parse_predict({"instances": [{"b64": text}]}, _model("uint8", (-1, 4))).inputs["x"].tolist() == [[1, 2, 3, 4]]


def test_b64_cannot_fill_two_free_dimensions():
    with pytest.raises(ServingError, match=r"one b64 string cannot fill shape \[-1, -1\]"):
        rest.parse_predict({"inputs": _b64(np.zeros(4, np.uint8))}, _model("uint8", (-1, -1)))


def test_b64_is_refused_for_bool_inputs():
    with pytest.raises(ServingError, match=r"input 'x' is bool: b64 values carry the raw little-endian bytes of numeric inputs"):
        rest.parse_predict({"instances": [_b64(np.ones(2, np.uint8))]}, _model("bool"))


def test_json_numbers_keep_their_kind_for_the_loaders_safe_casts():
    request = rest.parse_predict({"inputs": {"x": [[1, 2], [3, 4]]}}, _model())
    assert request.inputs["x"].dtype == torch.int64  # the loader casts int -> float32 safely
    assert rest.parse_predict({"inputs": [[True, False]]}, _model()).inputs["x"].dtype == torch.bool


def test_nan_and_infinity_are_accepted_as_tf_does():
    request = rest.parse_predict({"instances": [[float("nan"), float("inf")]]}, _model())
    assert math.isnan(request.inputs["x"][0, 0]) and request.inputs["x"][0, 1] == math.inf


def test_an_empty_signature_name_means_the_default():
    assert rest.parse_predict({"signature_name": "", "instances": [[1, 2]]}, _model()).signature == "serving_default"


def test_examples_fill_each_example_s_slice_of_the_input():
    request = rest.parse_examples(
        {"signature_name": "serving_default", "examples": [{"x": [1, 2, 3, 4]}, {"x": [[5, 6], [7, 8]]}]},
        _classifier(shape=(-1, 2, 2)), "classify")
    assert request.inputs["x"].tolist() == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]


def test_a_scalar_feature_fills_a_rank_one_input():
    request = rest.parse_examples({"examples": [{"x": 0.5}, {"x": 1.5}]}, _classifier(shape=(-1,)), "classify")
    assert request.inputs["x"].tolist() == [0.5, 1.5]


# ----------------------------------------------------------------------------------------------------------
# Responses


def test_to_json_value_writes_special_floats_and_other_dtypes():
    value = rest.to_json_value(torch.tensor([0.1, float("nan"), float("inf"), -float("inf")]))
    assert value[0] == 0.1 and math.isnan(value[1]) and value[2:] == [math.inf, -math.inf]
    assert rest.to_json_value(torch.tensor([1.5], dtype=torch.bfloat16)) == [1.5]
    assert rest.to_json_value(torch.tensor([[True, False]])) == [[True, False]]
    assert rest.to_json_value(torch.tensor([2**40], dtype=torch.int64)) == [2**40]
    assert rest.to_json_value(torch.tensor(3.25, dtype=torch.float64)) == 3.25


def test_outputs_named_bytes_are_written_as_b64_rows():
    out = torch.tensor([[1, 2, 3], [250, 0, 7]], dtype=torch.uint8)
    response = rest.predict_response({"image_bytes": out}, row_format=True)
    assert [base64.b64decode(row["b64"]) for row in response["predictions"]] == [bytes([1, 2, 3]), bytes([250, 0, 7])]


def test_columnar_responses_name_several_outputs_and_unwrap_one():
    a, b = torch.tensor([1, 2]), torch.tensor([[0.5], [0.25]])
    assert rest.predict_response({"a": a, "b": b}, row_format=False) == {"outputs": {"a": [1, 2], "b": [[0.5], [0.25]]}}
    assert rest.predict_response({"b": b}, row_format=False) == {"outputs": [[0.5], [0.25]]}


def test_a_scalar_output_cannot_be_a_row():
    with pytest.raises(ServingError, match="Tensor name: s has no shape information"):
        rest.predict_response({"s": torch.tensor(1.0)}, row_format=True)


def _classifier(labels=None, outputs=None, shape=(-1, 2)):
    model = fake_model(lambda i: i, inputs={"x": {"dtype": "float32", "shape": list(shape)}}, outputs=outputs)
    model.signatures["serving_default"].update(method_name=rest.CLASSIFY_METHOD_NAME, class_labels=labels)
    return model


SCORES = torch.tensor([[0.25, 0.75], [0.5, 0.5]])


@pytest.mark.parametrize("outputs, labels, expected", [
    ({"scores": SCORES}, ["no", "yes"], [[["no", 0.25], ["yes", 0.75]], [["no", 0.5], ["yes", 0.5]]]),
    ({"scores": SCORES}, None, [[["0", 0.25], ["1", 0.75]], [["0", 0.5], ["1", 0.5]]]),
    ({"classes": torch.tensor([1, 0])}, ["no", "yes"], [[["yes", 0.0]], [["no", 0.0]]]),
    ({"classes": torch.tensor([[1, 0], [0, 1]]), "scores": torch.tensor([[0.75, 0.25], [0.5, 0.5]])}, ["no", "yes"],
     [[["yes", 0.75], ["no", 0.25]], [["no", 0.5], ["yes", 0.5]]]),
    ({"classes": torch.tensor([1, 0]), "scores": SCORES}, ["no", "yes"], [[["yes", 0.75]], [["no", 0.5]]]),  # top-1 id + full scores
])
def test_classification_results(outputs, labels, expected):
    assert rest.classify_response(outputs, _classifier(labels).signatures["serving_default"], "k") == {"results": expected}


def test_a_class_id_without_a_label_is_a_model_error():
    with pytest.raises(ServingError, match=r"Signature 'k' returned class id 5, which has no label \(class_labels: 2\)") as info:
        rest.classify_response({"classes": torch.tensor([5])}, {"class_labels": ["a", "b"]}, "k")
    assert info.value.status == 500


def test_regression_results_are_one_value_per_example():
    assert rest.regress_response({"outputs": torch.tensor([[0.5], [1.5]])}, "k") == {"results": [0.5, 1.5]}
    assert rest.regress_response({"value": torch.tensor([2.0])}, "k") == {"results": [2.0]}
    with pytest.raises(ServingError, match=r"either \[batch_size\] or \[batch_size, 1\] but got \[1, 2\]"):
        rest.regress_response({"outputs": torch.zeros(1, 2)}, "k")


def test_status_response_is_tf_s_shape():
    assert rest.status_response([(3, "END", "UNKNOWN", "broken")]) == {"model_version_status": [
        {"version": "3", "state": "END", "status": {"error_code": "UNKNOWN", "error_message": "broken"}}]}


def test_metadata_maps_every_dtype_to_tf_s_name():
    names = {d: rest.model_metadata("m", _model(d)) for d in ("float16", "bfloat16", "float64", "int8", "uint8", "bool", "complex64")}
    dtypes = {d: m["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]["dtype"] for d, m in names.items()}
    assert dtypes == {"float16": "DT_HALF", "bfloat16": "DT_BFLOAT16", "float64": "DT_DOUBLE", "int8": "DT_INT8",
                      "uint8": "DT_UINT8", "bool": "DT_BOOL", "complex64": "DT_COMPLEX64"}


# ----------------------------------------------------------------------------------------------------------
# Open Inference Protocol


def _v2(datatype, data, shape, model_dtype="float32"):
    return rest.parse_v2_infer({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]},
                               _model(model_dtype, (-1, 2)))


def test_v2_data_may_be_flat_or_nested_and_takes_the_declared_datatype():
    assert _v2("FP64", [1, 2, 3, 4], [2, 2]).inputs["x"].dtype == torch.float64
    assert _v2("INT32", [[1, 2], [3, 4]], [2, 2]).inputs["x"].tolist() == [[1, 2], [3, 4]]
    assert _v2("BOOL", [True, False], [1, 2], "bool").inputs["x"].dtype == torch.bool
    assert _v2("FP32", [], [0, 2]).inputs["x"].shape == (0, 2)


def test_v2_integers_must_fit_the_declared_datatype():
    with pytest.raises(ServingError, match=r"Input 'x': datatype UINT8 but 'data' holds values in \[-1, 300\]"):
        _v2("UINT8", [300, -1], [1, 2])


def test_v2_bools_are_not_taken_from_numbers():
    with pytest.raises(ServingError, match="datatype BOOL but 'data' holds 'i'-kind values"):
        _v2("BOOL", [1, 0], [1, 2], "bool")


def test_v2_response_echoes_the_id_and_flattens_data():
    request = rest.V2Request("serving_default", {}, None, "abc")
    response = rest.v2_infer_response("m", fake_model(lambda i: i), {"y": torch.tensor([[1.0, 2.0]])}, request)
    assert response == {"model_name": "m", "model_version": "1", "id": "abc",
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
