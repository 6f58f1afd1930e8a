// Default per-setting recipes, derived from the released OmniQuant (algorithms.md §1.9) and AffineQuant
// (§2.6) scripts for LLaMA-2. Flags given by the user override any field.
#pragma once

#include <string>

#include "worker/block_transforms.h"

namespace qforge::worker {

struct Recipe {
  int epochs = 0;
  bool let = false;
  bool lwc = false;
  bool aug_loss = false;
  double let_lr = 5e-3;
  double lwc_lr = 1e-2;
  double alpha = 0.5;
  double stability_factor = 1.0;
  bool ln_matrix = false;  // faithful AffineQuant weight-only W3 (per channel) and W2
  std::string describe() const;
};

// wbits 2..8, abits 4..16 (16 = weight-only), group_size 0 = per channel.
Recipe default_recipe(Method method, int wbits, int abits, std::int64_t group_size, bool faithful);

}  // namespace qforge::worker
