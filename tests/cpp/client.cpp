// A C++ client of a torch_estimator export, built against the libtorch inside the torch wheel.
//
// It proves that model.pt needs neither Python nor torch_estimator: it loads the archive with
// torch::jit::load, reads the embedded signature.json, calls one signature's method on inputs read from
// raw files, and prints every output so that tests/test_export_cpp.py can compare the numbers.
//
//   client MODEL.pt METHOD NAME=DTYPE:D0xD1x...:FILE [NAME=...]...
//
// DTYPE is float32, float64, int64, int32, uint8 or bool; FILE holds the tensor's bytes, C order, native
// endianness (numpy's tobytes()). DTYPE string (an input signature.json declares with dtype "string",
// encoding "fingerprint64"): FILE holds one UTF-8 string per line, encoded by the artifact's own
// submodule string_fingerprint (an empty line is -1, no value). Output, one line each:
//   signature <the embedded signature.json on one line>
//   method <name>                      (every method of the module)
//   output <name> <dtype> <d0>x<d1> <v0> <v1> ...   (sorted by name; values printed as doubles)
#include <torch/script.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
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

// NAME=string:SHAPE:FILE (one string per line): encoded by the artifact's own TorchScript submodule
// "string_fingerprint" (signature.json's encoding "fingerprint64"), as the model expects them.
at::Tensor read_strings(torch::jit::Module& module, const std::string& path, const std::vector<int64_t>& shape) {
  std::ifstream file(path);
  c10::List<std::string> strings;
  for (std::string line; std::getline(file, line);) strings.push_back(line);
  auto encoder = module.attr("string_fingerprint").toModule();
  auto tensor = encoder.forward({strings}).toTensor();
  if (tensor.numel() != c10::multiply_integers(shape)) {
    throw std::runtime_error("the number of strings in " + path + " does not match the shape");
  }
  return tensor.reshape(shape);
}

// NAME=DTYPE:SHAPE:FILE -> (NAME, tensor)
std::pair<std::string, at::Tensor> read_input(torch::jit::Module& module, const std::string& arg) {
  auto eq = arg.find('=');
  auto c1 = arg.find(':', eq);
  auto c2 = arg.find(':', c1 + 1);
  if (eq == std::string::npos || c1 == std::string::npos || c2 == std::string::npos) {
    throw std::runtime_error("bad input argument " + arg + " (want NAME=DTYPE:D0xD1:FILE)");
  }
  auto shape = parse_shape(arg.substr(c1 + 1, c2 - c1 - 1));
  if (arg.substr(eq + 1, c1 - eq - 1) == "string") {
    return {arg.substr(0, eq), read_strings(module, arg.substr(c2 + 1), shape)};
  }
  auto dtype = parse_dtype(arg.substr(eq + 1, c1 - eq - 1));
  std::ifstream file(arg.substr(c2 + 1), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto tensor = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  if (static_cast<size_t>(tensor.nbytes()) != bytes.size()) {
    throw std::runtime_error("file size does not match the shape of input " + arg);
  }
  std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
  return {arg.substr(0, eq), tensor};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: client MODEL.pt METHOD NAME=DTYPE:D0xD1:FILE...\n";
    return 2;
  }
  try {
    torch::jit::ExtraFilesMap extra{{"signature.json", ""}};
    torch::jit::Module module = torch::jit::load(argv[1], torch::kCPU, extra);
    module.eval();
    std::string signature = extra["signature.json"];
    std::replace(signature.begin(), signature.end(), '\n', ' ');
    std::cout << "signature " << signature << "\n";
    for (const auto& method : module.get_methods()) std::cout << "method " << method.name() << "\n";

    c10::Dict<std::string, at::Tensor> inputs;
    for (int i = 3; i < argc; ++i) {
      auto [name, tensor] = read_input(module, argv[i]);
      inputs.insert(name, tensor);
    }
    torch::NoGradGuard no_grad;
    auto result = module.get_method(argv[2])({inputs}).toGenericDict();

    std::vector<std::pair<std::string, at::Tensor>> outputs;
    for (const auto& item : result) outputs.emplace_back(item.key().toStringRef(), item.value().toTensor());
    std::sort(outputs.begin(), outputs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::cout << std::setprecision(17);
    for (const auto& [name, tensor] : outputs) {
      std::cout << "output " << name << " " << dtype_name(tensor.scalar_type()) << " ";
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
