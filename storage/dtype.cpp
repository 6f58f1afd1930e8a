#include "storage/dtype.h"

#include "common/error.h"

namespace qforge::storage {

namespace {
struct DTypeRow {
  DType dtype;
  const char* name;
  std::size_t size;
  c10::ScalarType scalar;
};
constexpr DTypeRow kTable[] = {
    {DType::kF32, "F32", 4, c10::ScalarType::Float}, {DType::kF16, "F16", 2, c10::ScalarType::Half},
    {DType::kBF16, "BF16", 2, c10::ScalarType::BFloat16}, {DType::kI64, "I64", 8, c10::ScalarType::Long},
    {DType::kI32, "I32", 4, c10::ScalarType::Int}, {DType::kI8, "I8", 1, c10::ScalarType::Char},
    {DType::kU8, "U8", 1, c10::ScalarType::Byte},
};
const DTypeRow& row(DType d) {
  for (const auto& r : kTable) if (r.dtype == d) return r;
  throw InternalError("unknown DType");
}
}  // namespace

std::size_t dtype_size(DType dtype) { return row(dtype).size; }
const char* dtype_name(DType dtype) { return row(dtype).name; }
c10::ScalarType to_scalar_type(DType dtype) { return row(dtype).scalar; }

bool parse_dtype(const std::string& name, DType* out) {
  for (const auto& r : kTable) {
    if (name == r.name) {
      *out = r.dtype;
      return true;
    }
  }
  return false;
}

DType from_scalar_type(c10::ScalarType type) {
  for (const auto& r : kTable) if (r.scalar == type) return r.dtype;
  throw InternalError(std::string("tensor dtype ") + c10::toString(type) + " cannot be stored in safetensors by qforge");
}

}  // namespace qforge::storage
