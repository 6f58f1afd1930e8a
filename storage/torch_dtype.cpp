#include "storage/torch_dtype.h"

#include "common/error.h"

namespace qforge::storage {

namespace {
constexpr std::pair<DType, c10::ScalarType> kScalar[] = {
    {DType::kF32, c10::ScalarType::Float}, {DType::kF16, c10::ScalarType::Half}, {DType::kBF16, c10::ScalarType::BFloat16},
    {DType::kI64, c10::ScalarType::Long},  {DType::kI32, c10::ScalarType::Int},  {DType::kI8, c10::ScalarType::Char},
    {DType::kU8, c10::ScalarType::Byte},
};
}  // namespace

c10::ScalarType to_scalar_type(DType dtype) {
  for (const auto& [d, s] : kScalar) if (d == dtype) return s;
  throw InternalError("unknown DType");
}

DType from_scalar_type(c10::ScalarType type) {
  for (const auto& [d, s] : kScalar) if (s == type) return d;
  throw InternalError(std::string("tensor dtype ") + c10::toString(type) + " cannot be stored in safetensors by qforge");
}

}  // namespace qforge::storage
