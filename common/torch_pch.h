// Precompiled header for targets that use LibTorch (see qforge_use_torch in the top CMakeLists).
// Including <torch/torch.h> costs ~20 s per translation unit on 2 cores; compiled once here instead.
#pragma once
#include <torch/torch.h>
