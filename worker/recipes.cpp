#include "worker/recipes.h"

#include <sstream>

namespace qforge::worker {

std::string Recipe::describe() const {
  std::ostringstream o;
  o << "epochs=" << epochs << " let=" << let << " lwc=" << lwc << " aug_loss=" << aug_loss << " let_lr=" << let_lr
    << " lwc_lr=" << lwc_lr << " alpha=" << alpha << " sf=" << stability_factor << " ln_matrix=" << ln_matrix;
  return o.str();
}

Recipe default_recipe(Method method, int wbits, int abits, std::int64_t group_size, bool faithful) {
  Recipe r;
  if (method == Method::kRtn) return r;
  const bool weight_only = abits >= 16;
  r.lwc = true;
  r.epochs = wbits <= 2 ? 40 : 20;
  r.aug_loss = weight_only && wbits <= 2;
  if (method == Method::kOmniQuant) {
    // LLaMA weight-only: LWC only (LET gives no gain there, OmniQuant Table A3); W-A: LWC + LET.
    r.let = !weight_only;
    if (abits <= 4) {
      r.let_lr = 1e-3;  // LLaMA-2 W4A4 scripts
      r.alpha = 0.75;
    }
    return r;
  }
  // AffineQuant: LET (with the per-head v->o matrix) always.
  r.let = true;
  if (weight_only) {
    const bool small_bits = wbits <= 2 || (wbits == 3 && group_size == 0);
    r.stability_factor = small_bits ? 1e-2 : 1.0;
    r.ln_matrix = faithful && small_bits;
  } else {
    r.stability_factor = 0.1;
    if (abits <= 4) {
      r.let_lr = 1e-3;
      r.alpha = 0.75;
    }
  }
  return r;
}

}  // namespace qforge::worker
