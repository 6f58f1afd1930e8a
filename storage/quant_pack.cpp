// Bit packing of qforge's integer weights into GPTQ and compressed-tensors layouts, and back
// (layouts in quant_pack.h; authority: ../shared/docs/formats-and-ecosystem.md §3a, §3b).
//
// Everything is plain loops over raw pointers with uint32 arithmetic: packing is a bit-exact
// contract with other tools' unpackers, and explicit loops make every shift visible (and a 7B MLP
// matrix packs in a fraction of a second, which per-element Tensor indexing would not).
#include "storage/quant_pack.h"

#include <ATen/ATen.h>

#include <cstring>
#include <vector>

#include "common/error.h"

namespace qforge::storage {

namespace {

constexpr std::int64_t kWordBits = 32;

// GPTQ packs 32 values of b bits into b words as one LSB-first bitstream: value k occupies stream
// bits [b·k, b·k + b). For b ∈ {2, 4, 8} no value straddles a word, giving "element k at bit b·k";
// for b = 3 this is exactly AutoGPTQ's 10 | 1 | 10 | 1 | 10 scheme (v10 is split 2 + 1 bits over
// words 0/1, v21 is split 1 + 2 bits over words 1/2), so one routine serves every width.
void pack_block32(const std::uint32_t* values, int bits, std::uint32_t* words) {
  for (int w = 0; w < bits; ++w) words[w] = 0;
  for (int k = 0; k < 32; ++k) {
    const int pos = bits * k;
    const int w = pos / 32;
    const int off = pos % 32;
    words[w] |= values[k] << off;
    if (off + bits > 32) words[w + 1] |= values[k] >> (32 - off);
  }
}

void unpack_block32(const std::uint32_t* words, int bits, std::uint32_t* values) {
  const std::uint32_t mask = (1u << bits) - 1u;
  for (int k = 0; k < 32; ++k) {
    const int pos = bits * k;
    const int w = pos / 32;
    const int off = pos % 32;
    std::uint32_t v = words[w] >> off;
    if (off + bits > 32) v |= words[w + 1] << (32 - off);
    values[k] = v & mask;
  }
}

std::int64_t num_groups(std::int64_t in, std::int64_t group_size) {
  return group_size == 0 ? 1 : (in + group_size - 1) / group_size;
}

// Checks dtypes, shapes and value ranges of qforge's sidecar tensors; returns contiguous copies.
QuantizedLinearData checked(const QuantizedLinearData& q, int bits, const std::string& layer) {
  if (!q.codes.defined() || !q.scales.defined() || !q.zeros.defined()) {
    throw InputError(layer, "codes/scales/zeros", "missing tensor");
  }
  if (q.codes.dim() != 2 || q.codes.scalar_type() != at::kByte) {
    throw InputError(layer, "codes", "expected a uint8 [out, in] tensor");
  }
  const std::int64_t out = q.codes.size(0);
  if (q.scales.dim() != 2 || q.scales.scalar_type() != at::kHalf || q.scales.size(0) != out) {
    throw InputError(layer, "scales", "expected an fp16 [out, G] tensor with out = " + std::to_string(out));
  }
  if (q.zeros.dim() != 2 || q.zeros.scalar_type() != at::kInt || q.zeros.sizes() != q.scales.sizes()) {
    throw InputError(layer, "zeros", "expected an int32 tensor shaped like scales [" + std::to_string(out) + ", " +
                                         std::to_string(q.scales.size(1)) + "]");
  }
  QuantizedLinearData c{q.codes.contiguous(), q.scales.contiguous(), q.zeros.contiguous()};
  const std::int32_t maxq = (1 << bits) - 1;
  const std::uint8_t* cp = c.codes.data_ptr<std::uint8_t>();
  for (std::int64_t i = 0, n = c.codes.numel(); i < n; ++i) {
    if (cp[i] > maxq) {
      throw InputError(layer, "codes", "value " + std::to_string(cp[i]) + " exceeds " + std::to_string(maxq) +
                                           " for " + std::to_string(bits) + "-bit");
    }
  }
  const std::int32_t* zp = c.zeros.data_ptr<std::int32_t>();
  for (std::int64_t i = 0, n = c.zeros.numel(); i < n; ++i) {
    if (zp[i] < 0 || zp[i] > maxq) {
      throw InputError(layer, "zeros", "value " + std::to_string(zp[i]) + " outside [0, " + std::to_string(maxq) +
                                           "] for " + std::to_string(bits) + "-bit");
    }
  }
  return c;
}

}  // namespace

void check_gptq_bits(int bits, const std::string& layer) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    throw InputError(layer, "bits", std::to_string(bits) + " is not a GPTQ width (2, 3, 4 or 8)");
  }
}

void check_gptq_shape(std::int64_t out, std::int64_t in, std::int64_t group_size, const std::string& layer) {
  // The packers work in blocks of 32 values (GPTQModel's pack_block asserts both).
  if (in % 32 != 0) {
    throw InputError(layer, "in_features", std::to_string(in) + " is not a multiple of 32, GPTQ cannot pack it");
  }
  if (out % 32 != 0) {
    throw InputError(layer, "out_features", std::to_string(out) + " is not a multiple of 32, GPTQ cannot pack it");
  }
  if (group_size < 0 || (group_size > 0 && in % group_size != 0)) {
    throw InputError(layer, "group_size",
                     std::to_string(group_size) + " does not divide in_features " + std::to_string(in));
  }
}

namespace {

void check_ct_bits(int bits, const std::string& layer) {
  if (bits != 4 && bits != 8) {
    throw InputError(layer, "bits",
                     std::to_string(bits) + " is not packable as compressed-tensors pack-quantized (4 or 8)");
  }
}

// compressed-tensors pack_to_int32 along the last dim of a row-major [rows, cols] matrix of
// unsigned values: pf values per word, LSB first, the row zero-padded to a multiple of pf.
// `value_at(r, c)` supplies the value so callers can pack a transposed view without materialising it.
template <typename Get>
at::Tensor pack_rows_ct(std::int64_t rows, std::int64_t cols, int bits, Get value_at) {
  const std::int64_t pf = kWordBits / bits;
  const std::int64_t words = (cols + pf - 1) / pf;
  at::Tensor packed = at::zeros({rows, words}, at::kInt);
  auto* dst = reinterpret_cast<std::uint32_t*>(packed.data_ptr<std::int32_t>());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      dst[r * words + c / pf] |= static_cast<std::uint32_t>(value_at(r, c)) << (bits * (c % pf));
    }
  }
  return packed;
}

}  // namespace

bool gptq_v1_can_store(const at::Tensor& zeros) {
  const at::Tensor z = zeros.to(at::kInt).contiguous();
  const std::int32_t* p = z.data_ptr<std::int32_t>();
  for (std::int64_t i = 0, n = z.numel(); i < n; ++i) {
    if (p[i] < 1) return false;
  }
  return true;
}

GptqTensors pack_gptq(const QuantizedLinearData& q, int bits, std::int64_t group_size, bool v2,
                      const std::string& layer) {
  check_gptq_bits(bits, layer);
  const QuantizedLinearData c = checked(q, bits, layer);
  const std::int64_t out = c.codes.size(0);
  const std::int64_t in = c.codes.size(1);
  check_gptq_shape(out, in, group_size, layer);
  const std::int64_t groups = num_groups(in, group_size);
  if (c.scales.size(1) != groups) {
    throw InputError(layer, "scales", "has " + std::to_string(c.scales.size(1)) + " groups, group size " +
                                          std::to_string(group_size) + " needs " + std::to_string(groups));
  }
  if (!v2 && !gptq_v1_can_store(c.zeros)) {
    throw InputError(layer, "zeros",
                     "a zero point of 0 cannot be stored as GPTQ v1 (zero - 1 would wrap); write gptq_v2");
  }

  GptqTensors t;
  const std::uint8_t* codes = c.codes.data_ptr<std::uint8_t>();
  std::uint32_t vals[32];
  std::uint32_t words[8];

  // qweight [in·b/32, out]: column j holds W row j, 32 inputs per b words.
  t.qweight = at::empty({in / 32 * bits, out}, at::kInt);
  auto* qw = reinterpret_cast<std::uint32_t*>(t.qweight.data_ptr<std::int32_t>());
  for (std::int64_t j = 0; j < out; ++j) {
    const std::uint8_t* row = codes + j * in;
    for (std::int64_t blk = 0; blk < in / 32; ++blk) {
      for (int k = 0; k < 32; ++k) vals[k] = row[blk * 32 + k];
      pack_block32(vals, bits, words);
      for (int w = 0; w < bits; ++w) qw[(blk * bits + w) * out + j] = words[w];
    }
  }

  // qzeros [G, out·b/32]: packed the same way along the output dimension.
  const std::int32_t* zeros = c.zeros.data_ptr<std::int32_t>();
  const std::int64_t zcols = out / 32 * bits;
  const std::uint32_t offset = v2 ? 0u : 1u;
  t.qzeros = at::empty({groups, zcols}, at::kInt);
  auto* qz = reinterpret_cast<std::uint32_t*>(t.qzeros.data_ptr<std::int32_t>());
  for (std::int64_t g = 0; g < groups; ++g) {
    for (std::int64_t blk = 0; blk < out / 32; ++blk) {
      for (int k = 0; k < 32; ++k) vals[k] = static_cast<std::uint32_t>(zeros[(blk * 32 + k) * groups + g]) - offset;
      pack_block32(vals, bits, words);
      for (int w = 0; w < bits; ++w) qz[g * zcols + blk * bits + w] = words[w];
    }
  }

  t.scales = c.scales.t().contiguous();
  t.g_idx = at::empty({in}, at::kInt);
  std::int32_t* gi = t.g_idx.data_ptr<std::int32_t>();
  for (std::int64_t i = 0; i < in; ++i) gi[i] = group_size == 0 ? 0 : static_cast<std::int32_t>(i / group_size);
  return t;
}

QuantizedLinearData unpack_gptq(const GptqTensors& t, int bits, std::int64_t group_size, bool v2) {
  const std::string where = "GPTQ tensors";
  check_gptq_bits(bits, where);
  if (!t.qweight.defined() || t.qweight.dim() != 2 || t.qweight.scalar_type() != at::kInt ||
      t.qweight.size(0) % bits != 0) {
    throw InputError(where, "qweight", "expected an int32 [in·bits/32, out] tensor");
  }
  const std::int64_t in = t.qweight.size(0) / bits * 32;
  const std::int64_t out = t.qweight.size(1);
  if (out % 32 != 0) throw InputError(where, "qweight", "out " + std::to_string(out) + " is not a multiple of 32");
  if (group_size < 0 || (group_size > 0 && in % group_size != 0)) {
    throw InputError(where, "group_size", std::to_string(group_size) + " does not divide in " + std::to_string(in));
  }
  const std::int64_t groups = num_groups(in, group_size);
  const std::int64_t zcols = out / 32 * bits;
  if (!t.qzeros.defined() || t.qzeros.scalar_type() != at::kInt || t.qzeros.dim() != 2 ||
      t.qzeros.size(0) != groups || t.qzeros.size(1) != zcols) {
    throw InputError(where, "qzeros", "expected int32 [" + std::to_string(groups) + ", " + std::to_string(zcols) + "]");
  }
  if (!t.scales.defined() || t.scales.dim() != 2 || t.scales.size(0) != groups || t.scales.size(1) != out) {
    throw InputError(where, "scales", "expected [" + std::to_string(groups) + ", " + std::to_string(out) + "]");
  }

  QuantizedLinearData q;
  std::uint32_t vals[32];
  std::uint32_t words[8];
  const at::Tensor qwc = t.qweight.contiguous();
  const auto* qw = reinterpret_cast<const std::uint32_t*>(qwc.data_ptr<std::int32_t>());
  q.codes = at::empty({out, in}, at::kByte);
  std::uint8_t* codes = q.codes.data_ptr<std::uint8_t>();
  for (std::int64_t j = 0; j < out; ++j) {
    for (std::int64_t blk = 0; blk < in / 32; ++blk) {
      for (int w = 0; w < bits; ++w) words[w] = qw[(blk * bits + w) * out + j];
      unpack_block32(words, bits, vals);
      for (int k = 0; k < 32; ++k) codes[j * in + blk * 32 + k] = static_cast<std::uint8_t>(vals[k]);
    }
  }

  const at::Tensor qzc = t.qzeros.contiguous();
  const auto* qz = reinterpret_cast<const std::uint32_t*>(qzc.data_ptr<std::int32_t>());
  const std::int32_t offset = v2 ? 0 : 1;  // v1 readers add the 1 back per field
  q.zeros = at::empty({out, groups}, at::kInt);
  std::int32_t* zeros = q.zeros.data_ptr<std::int32_t>();
  for (std::int64_t g = 0; g < groups; ++g) {
    for (std::int64_t blk = 0; blk < out / 32; ++blk) {
      for (int w = 0; w < bits; ++w) words[w] = qz[g * zcols + blk * bits + w];
      unpack_block32(words, bits, vals);
      for (int k = 0; k < 32; ++k) zeros[(blk * 32 + k) * groups + g] = static_cast<std::int32_t>(vals[k]) + offset;
    }
  }
  q.scales = t.scales.to(at::kHalf).t().contiguous();
  return q;
}

CompressedTensorsPacked pack_compressed_tensors(const QuantizedLinearData& q, int bits, bool symmetric,
                                                const std::string& layer) {
  check_ct_bits(bits, layer);
  const QuantizedLinearData c = checked(q, bits, layer);
  const std::int64_t out = c.codes.size(0);
  const std::int64_t in = c.codes.size(1);
  const std::int64_t groups = c.scales.size(1);
  const std::int32_t mid = 1 << (bits - 1);
  const std::int32_t* zeros = c.zeros.data_ptr<std::int32_t>();
  if (symmetric) {
    // The format drops symmetric zero points (zp = 0 ⇔ our zero = 2^(b-1)); anything else would be lost.
    for (std::int64_t i = 0, n = c.zeros.numel(); i < n; ++i) {
      if (zeros[i] != mid) {
        throw InputError(layer, "zeros", "symmetric compressed-tensors needs every zero = " + std::to_string(mid) +
                                             ", found " + std::to_string(zeros[i]));
      }
    }
  }

  CompressedTensorsPacked p;
  // Unsigned value q + 2^(b-1) of the signed compressed-tensors code is qforge's code itself.
  const std::uint8_t* codes = c.codes.data_ptr<std::uint8_t>();
  p.weight_packed = pack_rows_ct(out, in, bits, [&](std::int64_t r, std::int64_t col) { return codes[r * in + col]; });
  p.weight_scale = c.scales.clone();
  if (!symmetric) {
    // pack_to_int32(zero_point, packed_dim=0): pack the transposed [G, out] signed zero points
    // (zero − 2^(b-1), shifted back to unsigned = zero) along out, then transpose back.
    at::Tensor packed_t =
        pack_rows_ct(groups, out, bits, [&](std::int64_t g, std::int64_t j) { return zeros[j * groups + g]; });
    p.weight_zero_point = packed_t.t().contiguous();
  }
  p.weight_shape = at::tensor(std::vector<std::int64_t>{out, in}, at::kLong);
  return p;
}

QuantizedLinearData unpack_compressed_tensors(const CompressedTensorsPacked& t, int bits, std::int64_t group_size,
                                              bool symmetric) {
  const std::string where = "compressed-tensors tensors";
  check_ct_bits(bits, where);
  if (!t.weight_shape.defined() || t.weight_shape.numel() != 2) {
    throw InputError(where, "weight_shape", "expected 2 elements [out, in]");
  }
  const at::Tensor shape = t.weight_shape.to(at::kLong).contiguous();
  const std::int64_t out = shape.data_ptr<std::int64_t>()[0];
  const std::int64_t in = shape.data_ptr<std::int64_t>()[1];
  const std::int64_t pf = kWordBits / bits;
  const std::int64_t wcols = (in + pf - 1) / pf;
  if (!t.weight_packed.defined() || t.weight_packed.scalar_type() != at::kInt || t.weight_packed.dim() != 2 ||
      t.weight_packed.size(0) != out || t.weight_packed.size(1) != wcols) {
    throw InputError(where, "weight_packed", "expected int32 [" + std::to_string(out) + ", " + std::to_string(wcols) + "]");
  }
  if (group_size < 0) throw InputError(where, "group_size", "negative: " + std::to_string(group_size));
  const std::int64_t groups = num_groups(in, group_size);
  if (!t.weight_scale.defined() || t.weight_scale.dim() != 2 || t.weight_scale.size(0) != out ||
      t.weight_scale.size(1) != groups) {
    throw InputError(where, "weight_scale", "expected [" + std::to_string(out) + ", " + std::to_string(groups) + "]");
  }
  const std::uint32_t mask = (1u << bits) - 1u;

  QuantizedLinearData q;
  const at::Tensor wp = t.weight_packed.contiguous();
  const auto* src = reinterpret_cast<const std::uint32_t*>(wp.data_ptr<std::int32_t>());
  q.codes = at::empty({out, in}, at::kByte);
  std::uint8_t* codes = q.codes.data_ptr<std::uint8_t>();
  for (std::int64_t r = 0; r < out; ++r) {
    for (std::int64_t col = 0; col < in; ++col) {
      codes[r * in + col] = static_cast<std::uint8_t>((src[r * wcols + col / pf] >> (bits * (col % pf))) & mask);
    }
  }

  if (symmetric) {
    q.zeros = at::full({out, groups}, 1 << (bits - 1), at::kInt);
  } else {
    const std::int64_t zrows = (out + pf - 1) / pf;
    if (!t.weight_zero_point.defined() || t.weight_zero_point.scalar_type() != at::kInt ||
        t.weight_zero_point.dim() != 2 || t.weight_zero_point.size(0) != zrows ||
        t.weight_zero_point.size(1) != groups) {
      throw InputError(where, "weight_zero_point",
                       "expected int32 [" + std::to_string(zrows) + ", " + std::to_string(groups) + "]");
    }
    const at::Tensor zc = t.weight_zero_point.contiguous();
    const auto* zsrc = reinterpret_cast<const std::uint32_t*>(zc.data_ptr<std::int32_t>());
    q.zeros = at::empty({out, groups}, at::kInt);
    std::int32_t* zeros = q.zeros.data_ptr<std::int32_t>();
    // Unsigned field = signed zero point + 2^(b-1) = qforge's zero.
    for (std::int64_t j = 0; j < out; ++j) {
      for (std::int64_t g = 0; g < groups; ++g) {
        zeros[j * groups + g] = static_cast<std::int32_t>((zsrc[(j / pf) * groups + g] >> (bits * (j % pf))) & mask);
      }
    }
  }
  q.scales = t.weight_scale.to(at::kHalf).contiguous();
  return q;
}

std::pair<at::Tensor, at::Tensor> pack_int8_channel(const QuantizedLinearData& q, const std::string& layer) {
  const QuantizedLinearData c = checked(q, 8, layer);
  if (c.scales.size(1) != 1) {
    throw InputError(layer, "scales", "int-quantized W8A8 needs one scale per output channel, got " +
                                          std::to_string(c.scales.size(1)) + " groups");
  }
  const std::int32_t* zeros = c.zeros.data_ptr<std::int32_t>();
  for (std::int64_t i = 0, n = c.zeros.numel(); i < n; ++i) {
    if (zeros[i] != 128) {
      throw InputError(layer, "zeros", "int-quantized W8A8 is symmetric (zero 128), found " + std::to_string(zeros[i]));
    }
  }
  at::Tensor weight = at::empty(c.codes.sizes(), at::kChar);
  const std::uint8_t* src = c.codes.data_ptr<std::uint8_t>();
  std::int8_t* dst = weight.data_ptr<std::int8_t>();
  for (std::int64_t i = 0, n = c.codes.numel(); i < n; ++i) dst[i] = static_cast<std::int8_t>(static_cast<int>(src[i]) - 128);
  return {weight, c.scales.clone()};
}

std::vector<PackedTensor> packed_layout(PackedFormat format, std::int64_t out, std::int64_t in, std::int64_t groups, int bits,
                                        std::int64_t group_size, bool symmetric, const std::string& layer) {
  switch (format) {
    case PackedFormat::kGptq:
      check_gptq_bits(bits, layer);
      check_gptq_shape(out, in, group_size, layer);
      return {{"qweight", at::kInt, {in * bits / 32, out}},
              {"qzeros", at::kInt, {groups, out * bits / 32}},
              {"scales", at::kHalf, {groups, out}},
              {"g_idx", at::kInt, {in}}};
    case PackedFormat::kPackQuantized: {
      check_ct_bits(bits, layer);
      const std::int64_t pf = 32 / bits;
      std::vector<PackedTensor> t = {{"weight_packed", at::kInt, {out, (in + pf - 1) / pf}},
                                     {"weight_scale", at::kHalf, {out, groups}},
                                     {"weight_shape", at::kLong, {2}}};
      if (!symmetric) t.push_back({"weight_zero_point", at::kInt, {(out + pf - 1) / pf, groups}});
      return t;
    }
    case PackedFormat::kInt8Channel:
      if (groups != 1) {
        throw InputError(layer, "scales", "int-quantized W8A8 needs one scale per output channel, got " +
                                              std::to_string(groups) + " groups");
      }
      return {{"weight", at::kChar, {out, in}}, {"weight_scale", at::kHalf, {out, 1}}};
  }
  return {};
}

at::Tensor dequantize_linear(const QuantizedLinearData& q, std::int64_t group_size) {
  const std::string where = "quantized linear";
  const QuantizedLinearData c = checked(q, 8, where);
  const std::int64_t out = c.codes.size(0);
  const std::int64_t in = c.codes.size(1);
  if (group_size < 0) throw InputError(where, "group_size", "negative: " + std::to_string(group_size));
  const std::int64_t groups = num_groups(in, group_size);
  if (c.scales.size(1) != groups) {
    throw InputError(where, "scales", "has " + std::to_string(c.scales.size(1)) + " groups, group size " +
                                          std::to_string(group_size) + " needs " + std::to_string(groups));
  }
  const std::int64_t gs = group_size == 0 ? in : group_size;
  const at::Tensor scales = c.scales.to(at::kFloat);
  const float* sp = scales.data_ptr<float>();
  const std::int32_t* zp = c.zeros.data_ptr<std::int32_t>();
  const std::uint8_t* cp = c.codes.data_ptr<std::uint8_t>();
  at::Tensor w = at::empty({out, in}, at::kFloat);
  float* wp = w.data_ptr<float>();
  for (std::int64_t r = 0; r < out; ++r) {
    for (std::int64_t col = 0; col < in; ++col) {
      const std::int64_t g = col / gs;
      wp[r * in + col] = sp[r * groups + g] * static_cast<float>(static_cast<std::int32_t>(cp[r * in + col]) - zp[r * groups + g]);
    }
  }
  return w;
}

}  // namespace qforge::storage
