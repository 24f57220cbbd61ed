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
#include <fstream>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "client_io.h"

namespace {

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
  auto input = client_io::parse_input_argument(arg);
  if (input.dtype == "string") return {input.name, read_strings(module, input.file, input.shape)};
  return {input.name, client_io::read_raw_tensor(input)};
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
    std::cout << "signature " << client_io::one_line(extra["signature.json"]) << "\n";
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
    for (const auto& [name, tensor] : outputs) client_io::print_output(name, tensor);
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
