// What both C++ test clients share: reading an input tensor from a raw file named on the command line, and
// printing an output tensor as one line of text that tests/test_export_cpp.py parses.
//
// An input argument is NAME=DTYPE:D0xD1x...:FILE. DTYPE is float32, float64, int64, int32, uint8 or bool;
// FILE holds the tensor's bytes, C order, native endianness (numpy's tobytes()).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace client_io {

inline at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "int64") return at::kLong;
  if (name == "int32") return at::kInt;
  if (name == "uint8") return at::kByte;
  if (name == "bool") return at::kBool;
  throw std::runtime_error("unsupported dtype " + name);
}

inline std::string dtype_name(at::ScalarType type) {
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

inline std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream stream(text);
  std::string dim;
  while (std::getline(stream, dim, 'x')) {
    if (!dim.empty()) shape.push_back(std::stoll(dim));
  }
  return shape;
}

// NAME=DTYPE:SHAPE:FILE, split (the dtype kept as text: the TorchScript client also takes "string").
struct InputArgument {
  std::string text;  // the whole argument, for error messages
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string file;
};

inline InputArgument parse_input_argument(const std::string& arg) {
  auto eq = arg.find('=');
  auto c1 = arg.find(':', eq);
  auto c2 = arg.find(':', c1 + 1);
  if (eq == std::string::npos || c1 == std::string::npos || c2 == std::string::npos) {
    throw std::runtime_error("bad input argument " + arg + " (want NAME=DTYPE:D0xD1:FILE)");
  }
  return {arg, arg.substr(0, eq), arg.substr(eq + 1, c1 - eq - 1), parse_shape(arg.substr(c1 + 1, c2 - c1 - 1)),
          arg.substr(c2 + 1)};
}

// The tensor whose bytes FILE holds; its size must match DTYPE and SHAPE.
inline at::Tensor read_raw_tensor(const InputArgument& input) {
  std::ifstream file(input.file, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto tensor = at::empty(input.shape, at::TensorOptions().dtype(parse_dtype(input.dtype)));
  if (static_cast<size_t>(tensor.nbytes()) != bytes.size()) {
    throw std::runtime_error("file size does not match the shape of input " + input.text);
  }
  std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
  return tensor;
}

inline std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

// "output <label> <dtype> <d0>x<d1> <v0> <v1> ..." (values as doubles; set the stream's precision first).
inline void print_output(const std::string& label, const at::Tensor& tensor) {
  std::cout << "output " << label << " " << dtype_name(tensor.scalar_type()) << " ";
  for (int64_t d = 0; d < tensor.dim(); ++d) std::cout << (d ? "x" : "") << tensor.size(d);
  auto values = tensor.to(at::kDouble).contiguous();
  const double* data = values.data_ptr<double>();
  for (int64_t j = 0; j < values.numel(); ++j) std::cout << " " << data[j];
  std::cout << "\n";
}

}  // namespace client_io
