#include "storage/dtype.h"

#include "common/error.h"

namespace qforge::storage {

namespace {
struct DTypeRow {
  DType dtype;
  const char* name;
  std::size_t size;
};
constexpr DTypeRow kTable[] = {
    {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8},
    {DType::kI32, "I32", 4}, {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
};
const DTypeRow& row(DType d) {
  for (const auto& r : kTable) if (r.dtype == d) return r;
  throw InternalError("unknown DType");
}
}  // namespace

std::size_t dtype_size(DType dtype) { return row(dtype).size; }
const char* dtype_name(DType dtype) { return row(dtype).name; }

bool parse_dtype(const std::string& name, DType* out) {
  for (const auto& r : kTable) {
    if (name == r.name) {
      *out = r.dtype;
      return true;
    }
  }
  return false;
}

}  // namespace qforge::storage
