// Translation unit of the qforge_torch_pch target, which only exists to build the shared LibTorch PCH.
#include "common/torch_pch.h"
