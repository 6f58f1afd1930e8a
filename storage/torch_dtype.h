// storage::DType <-> torch's scalar types (the part of dtype.h that needs LibTorch).
#pragma once

#include <c10/core/ScalarType.h>

#include "storage/dtype.h"

namespace qforge::storage {

c10::ScalarType to_scalar_type(DType dtype);
// InternalError for torch types with no safetensors counterpart that qforge writes.
DType from_scalar_type(c10::ScalarType type);

}  // namespace qforge::storage
