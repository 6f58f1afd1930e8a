// GPTQ and compressed-tensors packing (storage/quant_pack.h). The golden words below were derived by
// hand from ../shared/docs/formats-and-ecosystem.md §3a/§3b, not by running the packer, so they pin
// the published layout rather than whatever the code happens to do. Round trips then cover every
// width and group size with random data, and refusals check that messages name the layer.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/error.h"
#include "storage/quant_pack.h"

namespace qforge::storage {
namespace {

std::uint32_t word(const at::Tensor& t, std::int64_t r, std::int64_t c) {
  return static_cast<std::uint32_t>(t.index({r, c}).item<std::int32_t>());
}

// codes [out, in] from f(j, i), zeros filled with `zero`, scales 1.0 (G groups).
QuantizedLinearData make_layer(std::int64_t out, std::int64_t in, std::int64_t groups,
                               const std::function<int(std::int64_t, std::int64_t)>& code, int zero) {
  QuantizedLinearData q;
  q.codes = at::empty({out, in}, at::kByte);
  auto* p = q.codes.data_ptr<std::uint8_t>();
  for (std::int64_t j = 0; j < out; ++j)
    for (std::int64_t i = 0; i < in; ++i) p[j * in + i] = static_cast<std::uint8_t>(code(j, i));
  q.scales = at::ones({out, groups}, at::kHalf);
  q.zeros = at::full({out, groups}, zero, at::kInt);
  return q;
}

QuantizedLinearData random_layer(std::int64_t out, std::int64_t in, std::int64_t group_size, int bits,
                                 bool symmetric) {
  const std::int64_t groups = group_size == 0 ? 1 : (in + group_size - 1) / group_size;
  QuantizedLinearData q;
  q.codes = at::randint(0, 1 << bits, {out, in}, at::kLong).to(at::kByte);
  q.scales = (at::rand({out, groups}) * 0.1 + 1e-3).to(at::kHalf);
  q.zeros = symmetric ? at::full({out, groups}, 1 << (bits - 1), at::kInt)
                      : at::randint(0, 1 << bits, {out, groups}, at::kLong).to(at::kInt);
  return q;
}

void expect_same(const QuantizedLinearData& a, const QuantizedLinearData& b) {
  ASSERT_EQ(a.codes.sizes(), b.codes.sizes());
  EXPECT_TRUE(at::equal(a.codes, b.codes));
  ASSERT_EQ(a.zeros.sizes(), b.zeros.sizes());
  EXPECT_TRUE(at::equal(a.zeros, b.zeros));
  ASSERT_EQ(a.scales.scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(a.scales, b.scales));
}

void expect_input_error(const std::function<void()>& f, std::initializer_list<std::string> words) {
  try {
    f();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const std::string& w : words) EXPECT_NE(msg.find(w), std::string::npos) << "lacks \"" << w << "\": " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected InputError, nothing was thrown";
}

const std::string kLayer = "model.layers.0.mlp.down_proj";

// 4-bit, element k of a word at bit 4k. code[j][i] = i % 16, so inputs 0..7 of every column give
// nibbles 0..7 (0x76543210) and inputs 8..15 give 0xFEDCBA98. Column 1 is reversed (15 − i % 16) to
// pin that qweight's column is the output index: 0x89ABCDEF, 0x01234567.
TEST(QuantPack, Gptq4BitSymmetricGolden) {
  auto code = [](std::int64_t j, std::int64_t i) { return static_cast<int>(j == 1 ? 15 - i % 16 : i % 16); };
  const QuantizedLinearData q = make_layer(32, 32, 1, code, 8);
  for (bool v2 : {false, true}) {
    const GptqTensors t = pack_gptq(q, 4, 0, v2, kLayer);
    ASSERT_EQ(t.qweight.sizes(), (at::IntArrayRef{4, 32}));
    ASSERT_EQ(t.qzeros.sizes(), (at::IntArrayRef{1, 4}));
    ASSERT_EQ(t.scales.sizes(), (at::IntArrayRef{1, 32}));
    ASSERT_EQ(t.g_idx.sizes(), (at::IntArrayRef{32}));
    EXPECT_EQ(t.qweight.scalar_type(), at::kInt);
    EXPECT_EQ(t.scales.scalar_type(), at::kHalf);
    EXPECT_EQ(t.g_idx.scalar_type(), at::kInt);
    for (std::int64_t j = 0; j < 32; ++j) {
      const bool rev = j == 1;
      EXPECT_EQ(word(t.qweight, 0, j), rev ? 0x89ABCDEFu : 0x76543210u) << j;
      EXPECT_EQ(word(t.qweight, 1, j), rev ? 0x01234567u : 0xFEDCBA98u) << j;
      EXPECT_EQ(word(t.qweight, 2, j), rev ? 0x89ABCDEFu : 0x76543210u) << j;
      EXPECT_EQ(word(t.qweight, 3, j), rev ? 0x01234567u : 0xFEDCBA98u) << j;
    }
    for (std::int64_t c = 0; c < 4; ++c) EXPECT_EQ(word(t.qzeros, 0, c), v2 ? 0x88888888u : 0x77777777u);
    EXPECT_EQ(t.g_idx.count_nonzero().item<std::int64_t>(), 0);
    expect_same(unpack_gptq(t, 4, 0, v2), q);
  }
}

// 3-bit: 32 values of one column are a 96-bit LSB-first stream, value k at stream bit 3k, over
// words 0..2 (10 | 1 | 10 | 1 | 10). With v_i = i % 8 each run of 8 values is the 24-bit octal
// number 0o76543210 = P = 0xFAC688, and the stream is P | P<<24 | P<<48 | P<<72:
//   word0 = bits  0..31 = P | (P & 0xFF) << 24           = 0x88FAC688
//           (v10 = 0b010: its low bits "10" sit at bits 30–31 → bit 31 set)
//   word1 = bits 32..63 = P >> 8 | (P & 0xFFFF) << 16    = 0xC688FAC6
//           (bit 0 = bit 2 of v10 = 0; v11 = 3 at bits 1..3; bit 31 = bit 0 of v21 = 5 → 1)
//   word2 = bits 64..95 = P >> 16 | P << 8               = 0xFAC688FA
//           (bits 0–1 = bits 1–2 of v21 = 0b10; v22 = 6 at bits 2..4, v23 = 7 at 5..7 → 0xFA)
// Zeros: symmetric 3-bit zero 4, v1 stores 3 = 0b011 everywhere: stream bit n set iff n % 3 != 2:
//   word0 = 0xDB6DB6DB, word1 (n = 32 + k: k % 3 != 0) = 0xB6DB6DB6, word2 (k % 3 != 1) = 0x6DB6DB6D.
TEST(QuantPack, Gptq3BitCrossesWordBoundaries) {
  auto code = [](std::int64_t j, std::int64_t i) { return j == 5 ? static_cast<int>(i % 8) : 0; };
  const QuantizedLinearData q = make_layer(32, 32, 1, code, 4);
  const GptqTensors t = pack_gptq(q, 3, 0, false, kLayer);
  ASSERT_EQ(t.qweight.sizes(), (at::IntArrayRef{3, 32}));
  ASSERT_EQ(t.qzeros.sizes(), (at::IntArrayRef{1, 3}));
  EXPECT_EQ(word(t.qweight, 0, 5), 0x88FAC688u);
  EXPECT_EQ(word(t.qweight, 1, 5), 0xC688FAC6u);
  EXPECT_EQ(word(t.qweight, 2, 5), 0xFAC688FAu);
  for (std::int64_t j : {0, 4, 6, 31}) {
    for (std::int64_t w = 0; w < 3; ++w) EXPECT_EQ(word(t.qweight, w, j), 0u);
  }
  EXPECT_EQ(word(t.qzeros, 0, 0), 0xDB6DB6DBu);
  EXPECT_EQ(word(t.qzeros, 0, 1), 0xB6DB6DB6u);
  EXPECT_EQ(word(t.qzeros, 0, 2), 0x6DB6DB6Du);
  expect_same(unpack_gptq(t, 3, 0, false), q);
}

// Asymmetric 4-bit zeros packed along the output dimension. zeros[j] = j % 16 contains 0: v1 must
// refuse, v2 stores nibbles 0..7 / 8..15. zeros[j] = 1 + j % 15 is v1-storable: stored j % 15 gives
// j 0..7 → 0x76543210; j 8..15 → 8..14,0 → 0x0EDCBA98; j 16..23 → 1..8 → 0x87654321;
// j 24..31 → 9..14,0,1 → 0x10EDCBA9.
TEST(QuantPack, GptqAsymmetricZeros) {
  auto code = [](std::int64_t j, std::int64_t i) { return static_cast<int>((i * 7 + j) % 16); };
  QuantizedLinearData q = make_layer(32, 32, 1, code, 0);
  auto* z = q.zeros.data_ptr<std::int32_t>();
  for (int j = 0; j < 32; ++j) z[j] = j % 16;
  EXPECT_FALSE(gptq_v1_can_store(q.zeros));
  expect_input_error([&] { pack_gptq(q, 4, 0, false, kLayer); }, {kLayer, "zeros", "v1"});
  const GptqTensors t2 = pack_gptq(q, 4, 0, true, kLayer);
  EXPECT_EQ(word(t2.qzeros, 0, 0), 0x76543210u);
  EXPECT_EQ(word(t2.qzeros, 0, 1), 0xFEDCBA98u);
  EXPECT_EQ(word(t2.qzeros, 0, 2), 0x76543210u);
  EXPECT_EQ(word(t2.qzeros, 0, 3), 0xFEDCBA98u);
  expect_same(unpack_gptq(t2, 4, 0, true), q);

  for (int j = 0; j < 32; ++j) z[j] = 1 + j % 15;
  EXPECT_TRUE(gptq_v1_can_store(q.zeros));
  const GptqTensors t1 = pack_gptq(q, 4, 32, false, kLayer);
  EXPECT_EQ(word(t1.qzeros, 0, 0), 0x76543210u);
  EXPECT_EQ(word(t1.qzeros, 0, 1), 0x0EDCBA98u);
  EXPECT_EQ(word(t1.qzeros, 0, 2), 0x87654321u);
  EXPECT_EQ(word(t1.qzeros, 0, 3), 0x10EDCBA9u);
  expect_same(unpack_gptq(t1, 4, 32, false), q);
}

// compressed-tensors int4 symmetric: weight_packed is the transpose of GPTQ's qweight. in = 12 is
// not a multiple of pf = 8: row j = [0x76543210, 0x0000BA98] (values 8..11 then zero padding).
TEST(QuantPack, CompressedTensorsInt4SymmetricGolden) {
  at::manual_seed(11);
  const QuantizedLinearData q = random_layer(64, 128, 32, 4, true);
  const CompressedTensorsPacked p = pack_compressed_tensors(q, 4, true, kLayer);
  EXPECT_FALSE(p.weight_zero_point.defined());
  EXPECT_TRUE(at::equal(p.weight_packed, pack_gptq(q, 4, 32, false, kLayer).qweight.t()));
  EXPECT_TRUE(at::equal(p.weight_scale, q.scales));
  EXPECT_EQ(p.weight_shape.scalar_type(), at::kLong);
  EXPECT_EQ(p.weight_shape[0].item<std::int64_t>(), 64);
  EXPECT_EQ(p.weight_shape[1].item<std::int64_t>(), 128);

  const QuantizedLinearData small = make_layer(2, 12, 1, [](std::int64_t, std::int64_t i) { return static_cast<int>(i); }, 8);
  const CompressedTensorsPacked s = pack_compressed_tensors(small, 4, true, kLayer);
  ASSERT_EQ(s.weight_packed.sizes(), (at::IntArrayRef{2, 2}));
  for (std::int64_t j = 0; j < 2; ++j) {
    EXPECT_EQ(word(s.weight_packed, j, 0), 0x76543210u);
    EXPECT_EQ(word(s.weight_packed, j, 1), 0x0000BA98u);
  }
  expect_same(unpack_compressed_tensors(s, 4, 0, true), small);
}

// Asymmetric zero points: signed zp = zero − 2^(b-1), shifted back to unsigned (= zero), packed along
// dim 0 (outputs) with zero padding. 4-bit, out = 3, G = 2, zeros [[1,2],[3,4],[5,15]]:
//   weight_zero_point [1, 2] = [[0x00000531, 0x00000F42]].
// 8-bit, out = 5, G = 1, zeros [0,1,128,255,7]: pf = 4 → [[0xFF800100], [0x00000007]].
TEST(QuantPack, CompressedTensorsAsymmetricZeroPoints) {
  QuantizedLinearData q4 = make_layer(3, 8, 2, [](std::int64_t j, std::int64_t i) { return static_cast<int>(i + j); }, 0);
  const std::vector<std::int32_t> z4 = {1, 2, 3, 4, 5, 15};
  std::copy(z4.begin(), z4.end(), q4.zeros.data_ptr<std::int32_t>());
  const CompressedTensorsPacked p4 = pack_compressed_tensors(q4, 4, false, kLayer);
  ASSERT_EQ(p4.weight_zero_point.sizes(), (at::IntArrayRef{1, 2}));
  EXPECT_EQ(word(p4.weight_zero_point, 0, 0), 0x00000531u);
  EXPECT_EQ(word(p4.weight_zero_point, 0, 1), 0x00000F42u);
  expect_same(unpack_compressed_tensors(p4, 4, 4, false), q4);

  QuantizedLinearData q8 = make_layer(5, 4, 1, [](std::int64_t j, std::int64_t i) { return static_cast<int>(60 * j + i); }, 0);
  const std::vector<std::int32_t> z8 = {0, 1, 128, 255, 7};
  std::copy(z8.begin(), z8.end(), q8.zeros.data_ptr<std::int32_t>());
  const CompressedTensorsPacked p8 = pack_compressed_tensors(q8, 8, false, kLayer);
  ASSERT_EQ(p8.weight_zero_point.sizes(), (at::IntArrayRef{2, 1}));
  EXPECT_EQ(word(p8.weight_zero_point, 0, 0), 0xFF800100u);
  EXPECT_EQ(word(p8.weight_zero_point, 1, 0), 0x00000007u);
  // Row 1 codes 60..63: 0x3F3E3D3C.
  EXPECT_EQ(word(p8.weight_packed, 1, 0), 0x3F3E3D3Cu);
  expect_same(unpack_compressed_tensors(p8, 8, 0, false), q8);

  // Symmetric packing cannot drop zero points that are not 2^(b-1).
  expect_input_error([&] { pack_compressed_tensors(q4, 4, true, kLayer); }, {kLayer, "zeros"});
}

TEST(QuantPack, GptqRoundTripsEveryWidthAndGroup) {
  at::manual_seed(5);
  for (int bits : {2, 3, 4, 8}) {
    for (std::int64_t gs : {0, 32, 64, 128}) {
      for (bool sym : {true, false}) {
        for (bool v2 : {false, true}) {
          SCOPED_TRACE("bits " + std::to_string(bits) + " gs " + std::to_string(gs) + " sym " + std::to_string(sym) +
                       " v2 " + std::to_string(v2));
          QuantizedLinearData q = random_layer(96, 256, gs, bits, sym);
          if (!v2) q.zeros.clamp_min_(1);
          const GptqTensors t = pack_gptq(q, bits, gs, v2, kLayer);
          EXPECT_EQ(t.qweight.size(0), 256 / 32 * bits);
          EXPECT_EQ(t.qzeros.size(1), 96 / 32 * bits);
          if (gs > 0) {
            EXPECT_EQ(t.g_idx[255].item<std::int32_t>(), 255 / gs);
          }
          const QuantizedLinearData u = unpack_gptq(t, bits, gs, v2);
          expect_same(u, q);
          EXPECT_TRUE(at::equal(dequantize_linear(u, gs), dequantize_linear(q, gs)));
        }
      }
    }
  }
}

TEST(QuantPack, CompressedTensorsRoundTrips) {
  at::manual_seed(6);
  for (int bits : {4, 8}) {
    for (std::int64_t gs : {0, 32, 64, 128}) {
      for (bool sym : {true, false}) {
        SCOPED_TRACE("bits " + std::to_string(bits) + " gs " + std::to_string(gs) + " sym " + std::to_string(sym));
        // out and in deliberately not multiples of pf: the format pads.
        const QuantizedLinearData q = random_layer(37, 200, gs, bits, sym);
        const CompressedTensorsPacked p = pack_compressed_tensors(q, bits, sym, kLayer);
        const std::int64_t pf = 32 / bits;
        EXPECT_EQ(p.weight_packed.size(1), (200 + pf - 1) / pf);
        if (!sym) {
          EXPECT_EQ(p.weight_zero_point.size(0), (37 + pf - 1) / pf);
        }
        const QuantizedLinearData u = unpack_compressed_tensors(p, bits, gs, sym);
        expect_same(u, q);
        EXPECT_TRUE(at::equal(dequantize_linear(u, gs), dequantize_linear(q, gs)));
      }
    }
  }
}

TEST(QuantPack, Int8ChannelAndDequantize) {
  QuantizedLinearData q = make_layer(2, 3, 1, [](std::int64_t j, std::int64_t i) { return static_cast<int>(j == 0 ? i : 255 - 3 * i); }, 128);
  // codes row 0: 0,1,2; row 1: 255,252,249.
  q.scales = at::tensor({0.5f, 0.25f}).to(at::kHalf).reshape({2, 1});
  const auto [w, s] = pack_int8_channel(q, kLayer);
  EXPECT_EQ(w.scalar_type(), at::kChar);
  EXPECT_TRUE(at::equal(w, at::tensor({-128, -127, -126, 127, 124, 121}, at::kChar).reshape({2, 3})));
  EXPECT_TRUE(at::equal(s, q.scales));
  const at::Tensor deq = dequantize_linear(q, 0);
  EXPECT_TRUE(at::equal(deq, at::tensor({-64.f, -63.5f, -63.f, 31.75f, 31.f, 30.25f}).reshape({2, 3})));

  // Generic dequantize allows a partial last group: in = 5, group 2 → groups {0,1}, {2,3}, {4}.
  QuantizedLinearData g = make_layer(1, 5, 3, [](std::int64_t, std::int64_t i) { return static_cast<int>(i); }, 1);
  g.scales = at::tensor({1.f, 2.f, 4.f}).to(at::kHalf).reshape({1, 3});
  EXPECT_TRUE(at::equal(dequantize_linear(g, 2), at::tensor({-1.f, 0.f, 2.f, 4.f, 12.f}).reshape({1, 5})));

  QuantizedLinearData asym = q;
  asym.zeros = at::full({2, 1}, 127, at::kInt);
  expect_input_error([&] { pack_int8_channel(asym, kLayer); }, {kLayer, "zeros"});
  QuantizedLinearData grouped = make_layer(2, 64, 2, [](std::int64_t, std::int64_t) { return 0; }, 128);
  expect_input_error([&] { pack_int8_channel(grouped, kLayer); }, {kLayer, "scales"});
}

TEST(QuantPack, Refusals) {
  at::manual_seed(7);
  // A 172-wide MLP (intermediate size 172): down_proj has in = 172.
  const QuantizedLinearData narrow_in = random_layer(64, 172, 0, 4, true);
  expect_input_error([&] { pack_gptq(narrow_in, 4, 0, false, kLayer); }, {kLayer, "in_features", "172", "32"});
  const QuantizedLinearData narrow_out = random_layer(172, 64, 0, 4, true);
  expect_input_error([&] { pack_gptq(narrow_out, 4, 0, false, "model.layers.0.mlp.up_proj"); },
                     {"model.layers.0.mlp.up_proj", "out_features", "172"});
  const QuantizedLinearData q = random_layer(32, 64, 0, 4, true);
  QuantizedLinearData q48 = q;
  q48.scales = at::ones({32, 2}, at::kHalf);
  q48.zeros = at::full({32, 2}, 8, at::kInt);
  expect_input_error([&] { pack_gptq(q48, 4, 48, false, kLayer); }, {kLayer, "group_size", "48"});
  expect_input_error([&] { pack_gptq(q, 4, 32, false, kLayer); }, {kLayer, "scales"});
  for (int bits : {1, 5, 6, 7, 16}) {
    expect_input_error([&] { pack_gptq(q, bits, 0, false, kLayer); }, {kLayer, "bits"});
  }
  for (int bits : {2, 3}) {
    expect_input_error([&] { pack_compressed_tensors(q, bits, true, kLayer); }, {kLayer, "bits"});
  }
  // Codes out of range for the width (a 4-bit layer with a code of 16).
  QuantizedLinearData big = q;
  big.codes = q.codes.clone();
  big.codes.index_put_({0, 0}, 16);
  expect_input_error([&] { pack_gptq(big, 4, 0, false, kLayer); }, {kLayer, "codes"});
}

// A Llama-7B MLP shape; timing is not asserted, but it must not take per-element Tensor indexing time.
TEST(QuantPack, SevenBShapeRoundTrips) {
  at::manual_seed(8);
  const QuantizedLinearData q = random_layer(11008, 4096, 128, 4, true);
  const GptqTensors t = pack_gptq(q, 4, 128, false, "model.layers.0.mlp.gate_proj");
  EXPECT_EQ(t.qweight.sizes(), (at::IntArrayRef{512, 11008}));
  EXPECT_EQ(t.qzeros.sizes(), (at::IntArrayRef{32, 1376}));
  EXPECT_EQ(t.scales.sizes(), (at::IntArrayRef{32, 11008}));
  EXPECT_EQ(static_cast<std::uint32_t>(t.qzeros.max().item<std::int32_t>()), 0x77777777u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qzeros.min().item<std::int32_t>()), 0x77777777u);
  expect_same(unpack_gptq(t, 4, 128, false), q);
  const CompressedTensorsPacked p = pack_compressed_tensors(q, 4, true, "model.layers.0.mlp.gate_proj");
  EXPECT_TRUE(at::equal(p.weight_packed, t.qweight.t()));
}

}  // namespace
}  // namespace qforge::storage
