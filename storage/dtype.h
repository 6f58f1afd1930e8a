// Element types of checkpoint tensors, as named in safetensors headers. Plain C++ (the header parser
// builds without LibTorch); storage/torch_dtype.h maps them to torch's types.
#pragma once

#include <cstdint>
#include <string>

namespace qforge::storage {

enum class DType { kF32, kF16, kBF16, kI64, kI32, kI8, kU8 };

std::size_t dtype_size(DType dtype);
// "F32", "F16", ... as in safetensors.
const char* dtype_name(DType dtype);
// Parses a safetensors dtype name; returns false for names qforge does not support.
bool parse_dtype(const std::string& name, DType* out);

}  // namespace qforge::storage
