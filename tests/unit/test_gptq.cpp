// GPTQ rounding (worker/gptq.h) against an independent reference written here in plain C++ over
// std::vector<double>: the paper's Algorithm 1 without lazy blocks (every later column updated right
// after each column), its own Cholesky factorisations and inverse, act-order by an explicit
// permutation. In fp64 both must choose identical codes; lazy blocks only reorder sums. Then the
// known properties: with a diagonal Hessian no error can be compensated and GPTQ is RTN, and on real
// layers of stories260K and ref-6m GPTQ's layer output error ||X Wᵀ - X Ŵᵀ|| is below RTN's on the
// same grid. End to end, `--method gptq` and `--rounding gptq` after a learned method beat their
// nearest-rounding twins on stories260K, and the output records how its codes were chosen.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"
#include "worker/gptq.h"
#include "common/file_util.h"
#include "worker/llama_model.h"

namespace qforge::worker {
namespace {

using Matrix = std::vector<std::vector<double>>;

// Lower-triangular L with A = L Lᵀ (A symmetric positive definite).
Matrix cholesky_lower(const Matrix& a) {
  const std::size_t n = a.size();
  Matrix l(n, std::vector<double>(n, 0.0));
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j <= i; ++j) {
      double s = a[i][j];
      for (std::size_t k = 0; k < j; ++k) s -= l[i][k] * l[j][k];
      l[i][j] = i == j ? std::sqrt(s) : s / l[j][j];
    }
  }
  return l;
}

// A⁻¹ from A = L Lᵀ: solve L Lᵀ x = e_c for every column c.
Matrix inverse_spd(const Matrix& a) {
  const std::size_t n = a.size();
  const Matrix l = cholesky_lower(a);
  Matrix inv(n, std::vector<double>(n, 0.0));
  for (std::size_t c = 0; c < n; ++c) {
    std::vector<double> y(n, 0.0), x(n, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
      double s = i == c ? 1.0 : 0.0;
      for (std::size_t k = 0; k < i; ++k) s -= l[i][k] * y[k];
      y[i] = s / l[i][i];
    }
    for (std::size_t i = n; i-- > 0;) {
      double s = y[i];
      for (std::size_t k = i + 1; k < n; ++k) s -= l[k][i] * x[k];
      x[i] = s / l[i][i];
    }
    for (std::size_t i = 0; i < n; ++i) inv[i][c] = x[i];
  }
  return inv;
}

Matrix to_matrix(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous();
  Matrix m(static_cast<std::size_t>(c.size(0)), std::vector<double>(static_cast<std::size_t>(c.size(1))));
  for (std::int64_t i = 0; i < c.size(0); ++i) {
    for (std::int64_t j = 0; j < c.size(1); ++j) m[i][j] = c[i][j].item<double>();
  }
  return m;
}

// The paper's algorithm, column by column. Returns codes [out][in].
std::vector<std::vector<int>> reference_gptq(const at::Tensor& w_t, const at::Tensor& h_t, const WeightQuantSpec& spec,
                                             const WeightQParams& qp, double damp, bool act_order) {
  Matrix w = to_matrix(w_t), h = to_matrix(h_t);
  const Matrix scale = to_matrix(qp.scale), zero = to_matrix(qp.zero);
  const std::size_t rows = w.size(), n = h.size();
  const double qmax = (1 << spec.bits) - 1;
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (act_order) std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return h[a][a] > h[b][b]; });
  for (std::size_t j = 0; j < n; ++j) {
    if (h[j][j] != 0) continue;
    h[j][j] = 1;
    for (auto& row : w) row[j] = 0;
  }
  double mean_diag = 0;
  for (std::size_t j = 0; j < n; ++j) mean_diag += h[j][j] / static_cast<double>(n);
  // H permuted into processing order, dampened, inverted, and factored as Hinv = Uᵀ U.
  Matrix hp(n, std::vector<double>(n));
  for (std::size_t a = 0; a < n; ++a) {
    for (std::size_t b = 0; b < n; ++b) hp[a][b] = h[order[a]][order[b]] + (a == b ? damp * mean_diag : 0.0);
  }
  const Matrix l = cholesky_lower(inverse_spd(hp));  // U = Lᵀ: U[a][b] = l[b][a]
  std::vector<std::vector<int>> codes(rows, std::vector<int>(n, 0));
  for (std::size_t a = 0; a < n; ++a) {
    const std::size_t col = order[a];
    const std::size_t g = spec.group_size > 0 ? col / static_cast<std::size_t>(spec.group_size) : 0;
    for (std::size_t r = 0; r < rows; ++r) {
      const double s = scale[r][g], z = zero[r][g];
      const double c = std::min(qmax, std::max(0.0, std::nearbyint(w[r][col] / s) + z));
      codes[r][col] = static_cast<int>(c);
      const double e = (w[r][col] - s * (c - z)) / l[a][a];
      for (std::size_t b = a + 1; b < n; ++b) w[r][order[b]] -= e * l[b][a];
    }
  }
  return codes;
}

std::vector<std::vector<int>> to_codes(const at::Tensor& c) {
  const at::Tensor t = c.to(at::kInt).contiguous();
  std::vector<std::vector<int>> out(static_cast<std::size_t>(t.size(0)), std::vector<int>(static_cast<std::size_t>(t.size(1))));
  for (std::int64_t i = 0; i < t.size(0); ++i) {
    for (std::int64_t j = 0; j < t.size(1); ++j) out[i][j] = t[i][j].item<int>();
  }
  return out;
}

// Correlated inputs (what makes GPTQ differ from RTN): X = Z·M with a random mixing M.
at::Tensor correlated_inputs(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor z = at::randn({rows, cols}, at::kDouble);
  const at::Tensor m = at::eye(cols, at::kDouble) + 0.5 * at::randn({cols, cols}, at::kDouble);
  return at::matmul(z, m);
}

TEST(Gptq, ChoosesTheReferenceCodesInFp64WithLazyBlocksGroupsAndActOrder) {
  for (const bool sym : {false, true}) {
    for (const bool act_order : {false, true}) {
      SCOPED_TRACE(std::string(sym ? "sym" : "asym") + (act_order ? " act-order" : ""));
      const at::Tensor x = correlated_inputs(40, 16, 11);
      at::manual_seed(12);
      const at::Tensor w = at::randn({6, 16}, at::kDouble);
      at::Tensor h = 2.0 * at::matmul(x.t(), x);
      h[5].zero_();  // input 5 is always zero: its column is dropped, as the reference does
      h.select(1, 5).zero_();
      const WeightQuantSpec spec{3, 4, sym, true};
      const WeightQParams qp = weight_qparams(w.to(at::kFloat), spec);
      GptqOptions o;
      o.enabled = true;
      o.act_order = act_order;
      o.block_size = 5;  // lazy blocks that straddle groups
      const GptqResult got = gptq_quantize(w, h, spec, qp, o);
      const auto want = reference_gptq(w, h, spec, qp, o.damp, act_order);
      EXPECT_EQ(to_codes(got.codes), want);
      const at::Tensor rtn = weight_codes(w.to(at::kFloat), spec, qp);
      EXPECT_FALSE(at::equal(got.codes, rtn)) << "the case must exercise error feedback";
      // q is the codes dequantized on the given grid.
      EXPECT_TRUE(at::allclose(got.q, dequantize_weight(got.codes, spec, qp).to(at::kDouble), 0, 1e-12));
    }
  }
}

TEST(Gptq, WithADiagonalHessianIsRoundToNearest) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({8, 24}, at::kFloat);
  const at::Tensor h = at::diag(at::rand({24}, at::kFloat) + 0.1);
  const WeightQuantSpec spec{4, 8, false, true};
  const WeightQParams qp = weight_qparams(w, spec);
  GptqOptions o;
  o.enabled = true;
  o.act_order = true;
  EXPECT_TRUE(at::equal(gptq_quantize(w, h, spec, qp, o).codes, weight_codes(w, spec, qp)));
}

TEST(Gptq, AHessianThatCannotBeFactoredIsANamedError) {
  const at::Tensor w = at::ones({2, 3}, at::kDouble);
  const at::Tensor h = -at::eye(3, at::kDouble);  // negative definite: no damping of 1% rescues it
  const WeightQuantSpec spec{4, 0, false, true};
  GptqOptions o;
  o.enabled = true;
  try {
    gptq_quantize(w, h, spec, weight_qparams(w.to(at::kFloat), spec), o, "unit 3 q_proj");
    FAIL() << "accepted";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("unit 3 q_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--gptq-damp"), std::string::npos) << e.what();
  }
}

// Real layers: block 0 and 1 of each model, the q_proj and gate_proj inputs on 8 sequences of 64
// random tokens through the FP model, W4 and W3 on RTN's grid (per channel for stories260K's 64-wide
// rows, groups of 64 for ref-6m). GPTQ minimises exactly this error greedily, so it must be below RTN's.
double layer_error(const at::Tensor& x, const at::Tensor& w, const at::Tensor& q) {
  const at::Tensor rows = x.reshape({-1, x.size(-1)}).to(at::kDouble);
  return at::matmul(rows, (w.to(at::kDouble) - q.to(at::kDouble)).t()).norm().item<double>();
}

void expect_gptq_below_rtn_on(const std::filesystem::path& dir, std::int64_t group) {
  LlamaModel m(dir);
  at::NoGradGuard no_grad;
  at::manual_seed(5);
  const at::Tensor ids = at::randint(3, m.config().vocab_size, {8, 64}, at::kLong);
  const RopeTables rope = m.rope(64);
  at::Tensor x = m.embed(ids);
  for (int b = 0; b < 2; ++b) {
    const BlockWeights fp = BlockWeights::load(m.checkpoint(), m.config(), b, at::kFloat, at::kCPU);
    BlockTaps taps;
    const at::Tensor next = block_forward(m.config(), fp, x, rope, {}, &taps);
    for (const auto& [name, w, input] : {std::tuple<const char*, at::Tensor, at::Tensor>{"q_proj", fp.q, taps.qkv_input},
                                         {"gate_proj", fp.gate, taps.fc1_input}}) {
      at::Tensor h = at::zeros({w.size(1), w.size(1)}, at::kFloat);
      add_to_hessian(h, input);
      for (const int bits : {4, 3}) {
        SCOPED_TRACE(dir.filename().string() + " block " + std::to_string(b) + " " + name + " W" + std::to_string(bits));
        const WeightQuantSpec spec{bits, group, false, true};
        const WeightQParams qp = weight_qparams(w, spec);
        GptqOptions o;
        o.enabled = true;
        const double gptq = layer_error(input, w, gptq_quantize(w, h, spec, qp, o).q);
        const double rtn = layer_error(input, w, dequantize_weight(weight_codes(w, spec, qp), spec, qp));
        EXPECT_LT(gptq, rtn);
        ::testing::Test::RecordProperty(dir.filename().string() + "_b" + std::to_string(b) + "_" + name + "_w" + std::to_string(bits),
                       std::to_string(gptq / rtn));
      }
    }
    x = next;
  }
}

TEST(Gptq, LayerOutputErrorIsBelowRtnOnRealLayers) {
  const auto stories = test::shared_data() / "models/stories260K-hf";
  const auto ref = test::shared_data() / "models/ref-6m";
  QF_REQUIRE_DATA(stories / "model.safetensors");
  QF_REQUIRE_DATA(ref / "model.safetensors");
  expect_gptq_below_rtn_on(stories, 0);
  expect_gptq_below_rtn_on(ref, 64);
}

// The engine: W3 per channel on stories260K (32 windows of 128 tokens from the model), scored on its
// held-out text against the FP model. Measured (2 threads): rtn KL 0.915 -> gptq 0.564, omniquant (5
// epochs) 0.587 -> omniquant+gptq 0.481; the thread-count spread of a whole calibration is ~1-3% of KL
// (test_engine_mpi.cpp), so the asserted 10% margin is several spreads wide and far below the gains.
TEST(GptqJob, GptqAndLearnedMethodsWithGptqRoundingBeatNearestRounding) {
  const auto model = test::shared_data() / "models/stories260K-hf";
  const auto text = test::shared_data() / "models/stories260K/generated-eval.txt";
  const auto tok = test::shared_data() / "models/stories260K/tok512.bin";
  QF_REQUIRE_DATA(model / "model.safetensors");
  QF_REQUIRE_DATA(text);
  const auto dir = test::make_temp_dir("gptq-job");
  const auto kl = [&](const std::string& name, const std::string& flags) {
    const auto out = dir / name;
    const auto r = test::run_command(test::qforge_binary() + " quantize --log-level warn --wbits 3 --model " +
                                     test::shell_quote(model.string()) + " --out " + test::shell_quote(out.string()) +
                                     " --calib-data model:generate --nsamples 32 --calib-seqlen 128 --joint-topk 0 " + flags);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return test::qforge_eval_json("--model " + test::shell_quote(out.string()) + " --reference " +
                                  test::shell_quote(model.string()) + " --data " + test::shell_quote(text.string()) +
                                  " --tokenizer " + test::shell_quote(tok.string()) + " --seqlen 128")
        .value("kl", NAN);
  };
  const double rtn = kl("rtn", "--method rtn"), gptq = kl("gptq", "--method gptq");
  EXPECT_LT(gptq, 0.9 * rtn) << "rtn " << rtn << " gptq " << gptq;
  const double omni = kl("omni", "--method omniquant --epochs 5");
  const double omni_gptq = kl("omni-gptq", "--method omniquant --epochs 5 --rounding gptq");
  EXPECT_LT(omni_gptq, 0.9 * omni) << "omniquant " << omni << " +gptq " << omni_gptq;
  const auto cfg = nlohmann::json::parse(read_file(dir / "gptq" / "config.json"));
  const auto& rounding = cfg["quantization_config"]["calibration"]["rounding"];
  EXPECT_EQ(rounding["method"], "gptq") << cfg.dump();
  EXPECT_EQ(rounding["damp"], 0.01);
  EXPECT_EQ(cfg["quantization_config"]["quant_method"], "qforge");
  // Refused before anything is written: contradictory or out-of-range GPTQ flags.
  for (const char* bad : {"--method gptq --rounding rtn", "--method rtn --rounding nearest", "--method gptq --gptq-damp 0",
                          "--method gptq --gptq-damp 2"}) {
    const auto r = test::run_command(test::qforge_binary() + " quantize --model " + test::shell_quote(model.string()) +
                                     " --out " + test::shell_quote((dir / "bad").string()) +
                                     " --calib-data model:generate " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(dir / "bad")) << bad;
  }
}

}  // namespace
}  // namespace qforge::worker
