// A C++ client of a torch_estimator AOTInductor export (model.aoti.pt2), built against the libtorch inside
// the torch wheel.
//
// It proves that the compiled package needs neither Python nor torch_estimator: it reads the embedded
// signature.json from the archive, loads one signature's compiled model with
// torch::inductor::AOTIModelPackageLoader ("model" is the default signature, the others are named after
// their "function" in signature.json), runs it on inputs read from raw files and prints every output so
// that tests/test_export_cpp.py can compare the numbers.
//
//   aoti_client MODEL.aoti.pt2 MODEL_NAME NAME=DTYPE:D0xD1x...:FILE [NAME=...]...
//
// Inputs are passed to the model in the order given: the order of signature.json's inputs (sorted by
// name). Outputs come back in the order of signature.json's outputs (sorted by name); the call spec
// printed below names them. DTYPE is float32, float64, int64, int32, uint8 or bool; FILE holds the
// tensor's bytes, C order, native endianness (numpy's tobytes()). Output, one line each:
//   signature <the embedded signature.json on one line>
//   metadata <key> <value>             (what the package records: device, CPU features, ...)
//   in_spec <json> / out_spec <json>   (the call spec: input and output names, in order)
//   output <index> <dtype> <d0>x<d1> <v0> <v1> ...   (values printed as doubles)
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "int64") return at::kLong;
  if (name == "int32") return at::kInt;
  if (name == "uint8") return at::kByte;
  if (name == "bool") return at::kBool;
  throw std::runtime_error("unsupported dtype " + name);
}

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(type);
  }
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream stream(text);
  std::string dim;
  while (std::getline(stream, dim, 'x')) {
    if (!dim.empty()) shape.push_back(std::stoll(dim));
  }
  return shape;
}

// NAME=DTYPE:SHAPE:FILE -> tensor
at::Tensor read_input(const std::string& arg) {
  auto eq = arg.find('=');
  auto c1 = arg.find(':', eq);
  auto c2 = arg.find(':', c1 + 1);
  if (eq == std::string::npos || c1 == std::string::npos || c2 == std::string::npos) {
    throw std::runtime_error("bad input argument " + arg + " (want NAME=DTYPE:D0xD1:FILE)");
  }
  auto dtype = parse_dtype(arg.substr(eq + 1, c1 - eq - 1));
  auto shape = parse_shape(arg.substr(c1 + 1, c2 - c1 - 1));
  std::ifstream file(arg.substr(c2 + 1), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto tensor = at::empty(shape, at::TensorOptions().dtype(dtype));
  if (static_cast<size_t>(tensor.nbytes()) != bytes.size()) {
    throw std::runtime_error("file size does not match the shape of input " + arg);
  }
  std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
  return tensor;
}

std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: aoti_client MODEL.aoti.pt2 MODEL_NAME NAME=DTYPE:D0xD1:FILE...\n";
    return 2;
  }
  try {
    {
      caffe2::serialize::PyTorchStreamReader archive(argv[1]);
      auto [data, size] = archive.getRecord("extra/signature.json");
      std::string signature(static_cast<const char*>(data.get()), size);
      std::cout << "signature " << one_line(signature) << "\n";
    }
    torch::inductor::AOTIModelPackageLoader loader(argv[1], argv[2]);
    std::map<std::string, std::string> metadata;
    for (const auto& [key, value] : loader.get_metadata()) metadata[key] = value;
    for (const auto& [key, value] : metadata) std::cout << "metadata " << key << " " << value << "\n";
    auto spec = loader.get_call_spec();
    std::cout << "in_spec " << one_line(spec.at(0)) << "\n" << "out_spec " << one_line(spec.at(1)) << "\n";

    std::vector<at::Tensor> inputs;
    for (int i = 3; i < argc; ++i) inputs.push_back(read_input(argv[i]));
    c10::InferenceMode inference;
    std::vector<at::Tensor> outputs = loader.run(inputs);

    std::cout << std::setprecision(17);
    for (size_t i = 0; i < outputs.size(); ++i) {
      const auto& tensor = outputs[i];
      std::cout << "output " << i << " " << dtype_name(tensor.scalar_type()) << " ";
      for (int64_t d = 0; d < tensor.dim(); ++d) std::cout << (d ? "x" : "") << tensor.size(d);
      auto values = tensor.to(at::kDouble).contiguous();
      const double* data = values.data_ptr<double>();
      for (int64_t j = 0; j < values.numel(); ++j) std::cout << " " << data[j];
      std::cout << "\n";
    }
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
