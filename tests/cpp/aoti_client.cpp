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

#include <iomanip>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "client_io.h"

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
      std::cout << "signature " << client_io::one_line(signature) << "\n";
    }
    torch::inductor::AOTIModelPackageLoader loader(argv[1], argv[2]);
    std::map<std::string, std::string> metadata;
    for (const auto& [key, value] : loader.get_metadata()) metadata[key] = value;
    for (const auto& [key, value] : metadata) std::cout << "metadata " << key << " " << value << "\n";
    auto spec = loader.get_call_spec();
    std::cout << "in_spec " << client_io::one_line(spec.at(0)) << "\n" << "out_spec " << client_io::one_line(spec.at(1)) << "\n";

    std::vector<at::Tensor> inputs;
    for (int i = 3; i < argc; ++i) inputs.push_back(client_io::read_raw_tensor(client_io::parse_input_argument(argv[i])));
    c10::InferenceMode inference;
    std::vector<at::Tensor> outputs = loader.run(inputs);

    std::cout << std::setprecision(17);
    for (size_t i = 0; i < outputs.size(); ++i) client_io::print_output(std::to_string(i), outputs[i]);
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
