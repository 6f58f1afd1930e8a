// Element types of checkpoint tensors, as named in safetensors headers.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace qforge::storage {

enum class DType { kF32, kF16, kBF16, kI64, kI32, kI8, kU8 };

std::size_t dtype_size(DType dtype);
// "F32", "F16", ... as in safetensors.
const char* dtype_name(DType dtype);
// Parses a safetensors dtype name; returns false for names qforge does not support.
bool parse_dtype(const std::string& name, DType* out);
c10::ScalarType to_scalar_type(DType dtype);
// InternalError for torch types with no safetensors counterpart that qforge writes.
DType from_scalar_type(c10::ScalarType type);

}  // namespace qforge::storage
