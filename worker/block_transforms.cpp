#include "worker/block_transforms.h"

#include <ATen/ATen.h>

#include <map>

#include "common/error.h"

namespace qforge::worker {

namespace {

constexpr double kTruncate = 1e-2;  // the reference's truncate_number threshold

at::Tensor smooth_scale(const at::Tensor& act, const at::Tensor& wmax, double alpha) {
  // SmoothQuant: s = act^α / w^(1-α), both clamped away from 0 as the reference does.
  return (act.clamp_min(1e-5).pow(alpha) / wmax.clamp_min(1e-5).pow(1.0 - alpha)).clamp_min(1e-5);
}

// Per-input-channel weight statistic of the linears that share an input: max |W| over rows (or the
// reference's signed max of the first linear only).
at::Tensor weight_stat(const std::vector<at::Tensor>& ws, bool signed_first) {
  if (signed_first) return std::get<0>(ws.front().to(at::kFloat).max(0));
  at::Tensor m;
  for (const auto& w : ws) {
    at::Tensor a = std::get<0>(w.to(at::kFloat).abs().max(0));
    m = m.defined() ? at::maximum(m, a) : a;
  }
  return m;
}

// [q_dim] statistics -> [kv, d] by taking the max over the query heads of each KV group.
at::Tensor per_kv_group(const at::Tensor& q_stat, std::int64_t kv, std::int64_t group, std::int64_t d) {
  return std::get<0>(q_stat.view({kv, group, d}).max(1));
}

// [kv, d] per-KV-channel values -> [q_dim] for the query heads of each group.
at::Tensor expand_to_queries(const at::Tensor& v, std::int64_t group) {
  const auto kv = v.size(0), d = v.size(1);
  return v.unsqueeze(1).expand({kv, group, d}).reshape({kv * group * d});
}

void snap_small_(at::Tensor t) {
  at::NoGradGuard no_grad;
  auto small = t.abs() < kTruncate;
  t.copy_(at::where(small, t.sign() * kTruncate, t));
}

}  // namespace

Method parse_method(const std::string& name) {
  if (name == "rtn") return Method::kRtn;
  if (name == "omniquant") return Method::kOmniQuant;
  if (name == "affinequant") return Method::kAffineQuant;
  throw InputError("--method", "", "unknown method '" + name + "' (rtn|omniquant|affinequant)");
}

const char* method_name(Method m) {
  switch (m) {
    case Method::kRtn: return "rtn";
    case Method::kOmniQuant: return "omniquant";
    default: return "affinequant";
  }
}

const std::vector<std::string>& linear_names() {
  static const std::vector<std::string> names = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                 "mlp.down_proj"};
  return names;
}

at::Tensor& linear_weight(BlockWeights& w, std::size_t i) {
  at::Tensor* t[] = {&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down};
  return *t[i];
}
const at::Tensor& linear_weight(const BlockWeights& w, std::size_t i) {
  return linear_weight(const_cast<BlockWeights&>(w), i);
}

at::Tensor accumulate_act_stats(const storage::LlamaConfig& c, const BlockWeights& w, const at::Tensor& x,
                                const RopeTables& rope, ActStats& stats) {
  at::NoGradGuard no_grad;
  BlockTaps taps;
  at::Tensor out = block_forward(c, w, x, rope, {}, &taps);
  auto chan_max = [](const at::Tensor& t) { return t.abs().reshape({-1, t.size(-1)}).amax(0).to(at::kFloat); };
  auto upd = [&](at::Tensor& acc, const at::Tensor& t) {
    at::Tensor m = chan_max(t);
    acc = acc.defined() ? at::maximum(acc, m) : m;
  };
  upd(stats.qkv, taps.qkv_input);
  upd(stats.o, taps.o_input);
  upd(stats.fc1, taps.fc1_input);
  return out;
}

std::int64_t band_width(std::int64_t n, int epoch, int epochs) {
  if (epochs <= 1) return n - 1;  // the reference divides by E - 1; one epoch trains the full band
  return static_cast<std::int64_t>(static_cast<double>(n - 1) / static_cast<double>(epochs - 1) * epoch);
}

at::Tensor band_mask(std::int64_t n, std::int64_t w, double sf) {
  auto i = at::arange(n, at::kLong);
  auto dist = (i.unsqueeze(1) - i.unsqueeze(0)).abs();
  auto m = at::where(dist <= w, at::full({n, n}, sf, at::kFloat), at::zeros({n, n}, at::kFloat));
  m.diagonal().fill_(1.0);
  return m;
}

bool strictly_diagonally_dominant(const at::Tensor& a) {
  at::Tensor diag = a.diagonal(0, -2, -1).abs();
  at::Tensor off = a.abs().sum(-1) - diag;
  return (diag > off).all().item<bool>();
}

BlockTransforms::BlockTransforms(const storage::LlamaConfig& c, const BlockWeights& fp, const ActStats& stats,
                                 const TransformOptions& o, const WeightQuantSpec& wspec)
    : config_(c), options_(o), wspec_(wspec), device_(fp.q.device()) {
  at::NoGradGuard no_grad;
  const std::int64_t d = c.head_dim, kv = c.num_key_value_heads, group = c.num_attention_heads / kv;
  const auto mdtype = o.fp64_matrices ? at::kDouble : at::kFloat;
  const bool affine = o.method == Method::kAffineQuant;
  if (o.let) {
    QF_CHECK(stats.qkv.defined(), "LET needs activation statistics");
    at::Tensor s1 = smooth_scale(stats.qkv, weight_stat({fp.q, fp.k, fp.v}, o.signed_max_init), o.alpha);
    at::Tensor s2 = smooth_scale(stats.fc1, weight_stat({fp.up, fp.gate}, o.signed_max_init), o.alpha);
    if (o.ln_matrix) {
      s_qkv_ = at::diag(s1).to(mdtype);
      s_fc1_ = at::diag(s2).to(mdtype);
    } else {
      s_qkv_ = s1;
      s_fc1_ = s2;
    }
    at::Tensor wo = std::get<0>(fp.o.to(at::kFloat).abs().max(0));  // [q_dim]
    at::Tensor svo = smooth_scale(per_kv_group(stats.o, kv, group, d), per_kv_group(wo, kv, group, d), o.alpha);
    vo_ = affine ? at::diag_embed(svo).to(mdtype) : svo;
    // A per-head q/k norm (Qwen3) sits between q_proj/k_proj and RoPE, with one weight over head_dim shared
    // by every head: a transform folded into q_proj/k_proj would no longer cancel in q·kᵀ, and a rotation
    // does not fold into a diagonal weight. What survives is a per-pair scale shared by all heads, folded
    // into the norms (k_norm·s, q_norm/s), in every mode.
    if (c.qk_norm) {
      qk_a_ = at::ones({1, d / 2}, at::kFloat);
    } else if (o.deployable) {
      qk_a_ = at::ones({kv, d / 2}, at::kFloat);
      if (affine) qk_b_ = at::zeros({kv, d / 2}, at::kFloat);
    } else {
      qk_ = affine ? at::eye(d, mdtype).unsqueeze(0).repeat({kv, 1, 1}) : at::ones({kv, d}, at::kFloat);
    }
    if (o.shifts) {
      d_qkv_ = at::zeros({c.hidden_size}, at::kFloat);  // LLaMA: zero-initialised (algorithms.md §1.4)
      d_fc1_ = at::zeros({c.hidden_size}, at::kFloat);
      d_vo_ = at::zeros({c.kv_dim()}, at::kFloat);
    }
  }
  if (o.lwc) {
    for (std::size_t i = 0; i < linear_names().size(); ++i) {
      const at::Tensor& w = linear_weight(fp, i);
      clips_.push_back(ClipParams::init(w.size(0), num_groups(w.size(1), wspec.group_size)));
    }
  }
  // Every parameter lives where the block's weights do (the statistics are there already; the
  // initial values above are built on the CPU).
  for (auto* t : {&s_qkv_, &s_fc1_, &d_qkv_, &d_fc1_, &vo_, &d_vo_, &qk_a_, &qk_b_, &qk_}) {
    if (t->defined()) *t = t->to(device_).set_requires_grad(true);
  }
  for (auto& cp : clips_) {
    cp.upper = cp.upper.to(device_).set_requires_grad(true);
    cp.lower = cp.lower.to(device_).set_requires_grad(true);
  }
  set_epoch(0, 1);
}

std::vector<std::pair<std::string, at::Tensor>> BlockTransforms::named_let_parameters() const {
  const std::pair<const char*, const at::Tensor*> all[] = {
      {"ln1.scale", &s_qkv_}, {"ln1.shift", &d_qkv_}, {"ln2.scale", &s_fc1_}, {"ln2.shift", &d_fc1_},
      {"vo.transform", &vo_}, {"vo.shift", &d_vo_},   {"qk.a", &qk_a_},       {"qk.b", &qk_b_},
      {"qk.transform", &qk_}};
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto [name, t] : all) {
    if (t->defined()) out.emplace_back(name, *t);
  }
  return out;
}

std::vector<at::Tensor> BlockTransforms::let_parameters() const {
  std::vector<at::Tensor> out;
  for (auto& [name, t] : named_let_parameters()) out.push_back(t);
  return out;
}

std::vector<at::Tensor> BlockTransforms::lwc_parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& cp : clips_) {
    out.push_back(cp.upper);
    out.push_back(cp.lower);
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> BlockTransforms::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, t] : named_let_parameters()) out.emplace_back(name, t.detach().clone());
  for (std::size_t i = 0; i < clips_.size(); ++i) {
    out.emplace_back("clip." + linear_names()[i] + ".upper", clips_[i].upper.detach().clone());
    out.emplace_back("clip." + linear_names()[i] + ".lower", clips_[i].lower.detach().clone());
  }
  return out;
}

void BlockTransforms::load_state(const std::vector<std::pair<std::string, at::Tensor>>& state) {
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> mine;
  for (auto& [name, t] : named_let_parameters()) mine[name] = t;
  for (std::size_t i = 0; i < clips_.size(); ++i) {
    mine["clip." + linear_names()[i] + ".upper"] = clips_[i].upper;
    mine["clip." + linear_names()[i] + ".lower"] = clips_[i].lower;
  }
  for (const auto& [name, value] : state) {
    auto it = mine.find(name);
    QF_CHECK(it != mine.end() && it->second.sizes() == value.sizes(), "transform state does not match: " + name);
    it->second.copy_(value);
  }
}

ClipParams BlockTransforms::clip(std::size_t linear) const { return clips_.empty() ? ClipParams{} : clips_[linear]; }

void BlockTransforms::set_epoch(int epoch, int epochs) {
  const double sf = options_.stability_factor;
  head_mask_ = band_mask(config_.head_dim, band_width(config_.head_dim, epoch, epochs), sf);
  if (options_.ln_matrix) ln_mask_ = band_mask(config_.hidden_size, band_width(config_.hidden_size, epoch, epochs), sf);
  const auto dtype = options_.fp64_matrices ? at::kDouble : at::kFloat;
  head_mask_ = head_mask_.to(device_, dtype);
  if (ln_mask_.defined()) ln_mask_ = ln_mask_.to(device_, dtype);
}

at::Tensor BlockTransforms::masked(const at::Tensor& matrix, const at::Tensor& mask) const { return matrix * mask; }

void BlockTransforms::truncate_small_scales() {
  at::NoGradGuard no_grad;
  // (parameter, is a matrix): LN transforms are matrices with --ln-matrix, v->o and faithful q/k
  // transforms are [kv, d, d] matrices under AffineQuant; everything else is a vector of scales.
  const std::pair<at::Tensor*, bool> params[] = {
      {&s_qkv_, options_.ln_matrix}, {&s_fc1_, options_.ln_matrix}, {&vo_, vo_.defined() && vo_.dim() == 3},
      {&qk_a_, false},               {&qk_, qk_.defined() && qk_.dim() == 3}};
  for (auto [t, matrix] : params) {
    if (!t->defined()) continue;
    if (matrix && options_.deployable) {
      // The paper's intent: keep the diagonal away from 0. The reference snaps every entry (so in-band
      // off-diagonals become >= 1e-2 in magnitude), which faithful mode reproduces.
      at::Tensor dg = t->diagonal(0, -2, -1);
      dg.copy_(at::where(dg.abs() < kTruncate, dg.sign() * kTruncate, dg));
    } else {
      snap_small_(*t);
    }
  }
}

std::int64_t BlockTransforms::enforce_diagonal_dominance() {
  at::NoGradGuard no_grad;
  std::int64_t projected = 0;
  auto fix = [&](at::Tensor& p, const at::Tensor& mask) {
    at::Tensor eff = p * mask;
    at::Tensor diag = eff.diagonal(0, -2, -1).abs();
    at::Tensor off = eff.abs().sum(-1) - diag;
    at::Tensor bad = off >= diag * 0.999;
    const std::int64_t n = bad.sum().item<std::int64_t>();
    if (n == 0) return;
    projected += n;
    // Scale the row's off-diagonal entries so that their masked sum is 0.99·|a_ii|.
    at::Tensor factor = at::where(bad, 0.99 * diag / off.clamp_min(1e-30), at::ones_like(diag)).unsqueeze(-1);
    at::Tensor eye = at::eye(p.size(-1), p.options()).expand_as(p);
    p.copy_(p * (eye + (1 - eye) * factor));
  };
  if (vo_.defined() && vo_.dim() == 3) fix(vo_, head_mask_);
  if (qk_.defined() && qk_.dim() == 3) fix(qk_, head_mask_);
  if (options_.ln_matrix) {
    fix(s_qkv_, ln_mask_);
    fix(s_fc1_, ln_mask_);
  }
  return projected;
}

BlockWeights BlockTransforms::transformed(const BlockWeights& fp) const {
  BlockWeights w = fp;
  if (!options_.let) return w;
  const auto& c = config_;
  const std::int64_t d = c.head_dim, kv = c.num_key_value_heads, group = c.num_attention_heads / kv, H = c.hidden_size;
  const auto wt = fp.q.scalar_type();

  // norm -> linears pair: returns {norm weight, norm bias, norm inverse} and rewrites the linears.
  auto ln_pair = [&](const at::Tensor& s, const at::Tensor& shift, const at::Tensor& mask, at::Tensor& norm_w,
                     at::Tensor& norm_b, at::Tensor& norm_inv, std::vector<std::pair<at::Tensor*, at::Tensor*>> lins) {
    for (auto [W, b] : lins) {
      if (shift.defined()) {
        at::Tensor add = at::matmul(*W, shift.to(wt));
        *b = b->defined() ? *b + add : add;
      }
    }
    if (s.dim() == 1) {
      for (auto [W, b] : lins) *W = *W * s.to(wt);
      if (shift.defined()) norm_b = -(shift.to(wt) / s.to(wt));
      norm_w = norm_w / s.to(wt);
    } else {
      at::Tensor A = masked(s, mask);
      for (auto [W, b] : lins) *W = at::matmul(W->to(A.scalar_type()), A.t()).to(wt);
      norm_inv = at::inverse(A).to(wt);
      if (shift.defined()) norm_b = -shift.to(wt);
    }
  };
  ln_pair(s_qkv_, d_qkv_, ln_mask_, w.input_norm, w.input_norm_bias, w.input_norm_inverse,
          {{&w.q, &w.q_bias}, {&w.k, &w.k_bias}, {&w.v, &w.v_bias}});
  ln_pair(s_fc1_, d_fc1_, ln_mask_, w.post_norm, w.post_norm_bias, w.post_norm_inverse,
          {{&w.gate, &w.gate_bias}, {&w.up, &w.up_bias}});

  // v -> o, per KV group.
  {
    const at::Tensor o_orig = w.o;
    if (d_vo_.defined()) {
      at::Tensor add = at::matmul(o_orig, expand_to_queries(d_vo_.view({kv, d}), group).to(wt));
      w.o_bias = w.o_bias.defined() ? w.o_bias + add : add;
    }
    if (vo_.dim() == 2) {
      at::Tensor s = vo_.to(wt);
      w.v = (w.v.view({kv, d, H}) / s.unsqueeze(-1)).reshape({kv * d, H});
      if (w.v_bias.defined() || d_vo_.defined()) {
        at::Tensor bv = w.v_bias.defined() ? w.v_bias : at::zeros({kv * d}, w.v.options());
        if (d_vo_.defined()) bv = bv - d_vo_.to(wt);
        w.v_bias = (bv.view({kv, d}) / s).reshape({kv * d});
      }
      w.o = w.o * expand_to_queries(s, group);
    } else {
      at::Tensor M = masked(vo_, head_mask_);                 // [kv, d, d]
      at::Tensor Minv = at::inverse(M);
      at::Tensor Wv = w.v.view({kv, d, H}).to(M.scalar_type());
      w.v = at::matmul(Minv.transpose(1, 2), Wv).reshape({kv * d, H}).to(wt);
      if (w.v_bias.defined() || d_vo_.defined()) {
        at::Tensor bv = w.v_bias.defined() ? w.v_bias : at::zeros({kv * d}, fp.v.options());
        if (d_vo_.defined()) bv = bv - d_vo_.to(wt);
        w.v_bias = at::matmul(bv.view({kv, 1, d}).to(M.scalar_type()), Minv).reshape({kv * d}).to(wt);
      }
      at::Tensor Wo = w.o.view({H, kv, group, d}).to(M.scalar_type());
      w.o = at::einsum("hjgc,jec->hjge", {Wo, M}).reshape({H, kv * group * d}).to(wt);
    }
  }

  // q / k, per KV group.
  {
    auto rows_k = [&](const at::Tensor& t) { return t.view({kv, d, -1}); };       // weight [kv, d, H] or bias [kv, d, 1]
    auto rows_q = [&](const at::Tensor& t) { return t.view({kv, group, d, -1}); };
    auto apply_kq = [&](auto fk, auto fq) {
      w.k = fk(rows_k(w.k)).reshape({kv * d, H});
      if (w.k_bias.defined()) w.k_bias = fk(rows_k(w.k_bias.unsqueeze(-1))).reshape({kv * d});
      w.q = fq(rows_q(w.q)).reshape({kv * group * d, H});
      if (w.q_bias.defined()) w.q_bias = fq(rows_q(w.q_bias.unsqueeze(-1))).reshape({kv * group * d});
    };
    if (qk_a_.defined() && config_.qk_norm) {
      const at::Tensor s = at::cat({qk_a_[0], qk_a_[0]}).to(wt);  // [d]: pair (i, i + d/2) shares a_i
      w.k_norm = w.k_norm * s;
      w.q_norm = w.q_norm / s;
    } else if (qk_a_.defined()) {
      // Pair (i, i + d/2) as a complex number times c = a + ib: k-rows get c, q-rows get c / |c|².
      at::Tensor a = qk_a_.to(wt).unsqueeze(-1);
      at::Tensor b = qk_b_.defined() ? qk_b_.to(wt).unsqueeze(-1) : at::zeros_like(a);
      auto rot = [d](const at::Tensor& r, const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& norm) {
        at::Tensor r1 = r.narrow(-2, 0, d / 2), r2 = r.narrow(-2, d / 2, d / 2);
        return at::cat({(a_ * r1 - b_ * r2) / norm, (b_ * r1 + a_ * r2) / norm}, -2);
      };
      at::Tensor n2 = a * a + b * b;
      apply_kq([&](const at::Tensor& r) { return rot(r, a, b, at::ones_like(n2)); },
               [&](const at::Tensor& r) { return rot(r, a.unsqueeze(1), b.unsqueeze(1), n2.unsqueeze(1)); });
    } else if (!qk_.defined()) {
      // no q/k transform (no LET)
    } else if (qk_.dim() == 2) {
      at::Tensor s = qk_.to(wt).unsqueeze(-1);  // [kv, d, 1]
      apply_kq([&](const at::Tensor& r) { return r * s; }, [&](const at::Tensor& r) { return r / s.unsqueeze(1); });
    } else {
      at::Tensor A = masked(qk_, head_mask_);  // [kv, d, d]
      at::Tensor Ainv_t = at::inverse(A).transpose(1, 2);
      const auto md = A.scalar_type();
      apply_kq([&](const at::Tensor& r) { return at::matmul(A, r.to(md)).to(wt); },
               [&](const at::Tensor& r) { return at::matmul(Ainv_t.unsqueeze(1), r.to(md)).to(wt); });
    }
  }
  return w;
}

BlockWeights BlockTransforms::fake_quantized(const BlockWeights& fp) const {
  BlockWeights w = transformed(fp);
  for (std::size_t i = 0; i < linear_names().size(); ++i) {
    at::Tensor& W = linear_weight(w, i);
    W = fake_quant_weight(W, wspec_, clip(i));
  }
  return w;
}

}  // namespace qforge::worker
