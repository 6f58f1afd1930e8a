// Packing qforge's integer weights into the layouts inference engines load, and back
// (../shared/docs/formats-and-ecosystem.md §3a GPTQ, §3b compressed-tensors).
//
// Input is qforge's sidecar layout per linear W [out, in]: `codes` uint8 [out, in] in [0, 2^b - 1],
// `scales` fp16 [out, G], `zeros` int32 [out, G] in [0, 2^b - 1] (GPTQ convention: symmetric zero =
// 2^(b-1)), G = ceil(in / group_size) with group_size 0 meaning one group per row (G = 1).
// Dequantized: w = scale · (code − zero), computed in fp32 from the fp16 scale: exactly qforge's
// fake-quant weight.
//
// GPTQ (AutoGPTQ / GPTQModel / vLLM `gptq`): qweight I32 [in·b/32, out] packed along the input
// dimension, LSB first (b ∈ {2, 4, 8}: element k of a word at bit b·k; b = 3: 32 values in 3 words,
// 10 | 1 | 10 | 1 | 10), qzeros I32 [G, out·b/32] packed the same way along the output dimension,
// scales F16 [G, out], g_idx I32 [in] = i / group_size (desc_act = false). checkpoint_format "gptq" (v1)
// stores zero − 1 (0x77777777 for symmetric 4-bit), "gptq_v2" stores zero. Requires in % 32 == 0,
// out % 32 == 0 and in % group_size == 0.
//
// compressed-tensors `pack-quantized` (weight-only int4/int8): weight_packed I32 [out, ceil(in/pf)]
// (pf = 32/b values per word) packed along the input dimension, LSB first, of the unsigned values
// q + 2^(b-1) = qforge's code; weight_scale [out, G]; weight_zero_point I32 [ceil(out/pf), G] of the
// signed zero points zero − 2^(b−1), packed along dim 0 (asymmetric only); weight_shape I64 [2].
// `int-quantized` (W8A8): weight I8 [out, in] = code − 128, weight_scale [out, 1] (symmetric,
// per channel).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::storage {

struct QuantizedLinearData {
  at::Tensor codes;   // uint8 [out, in]
  at::Tensor scales;  // fp16 [out, G]
  at::Tensor zeros;   // int32 [out, G]
};

struct GptqTensors {
  at::Tensor qweight;  // int32 [in·b/32, out]
  at::Tensor qzeros;   // int32 [G, out·b/32]
  at::Tensor scales;   // fp16 [G, out]
  at::Tensor g_idx;    // int32 [in]
};

// InputError naming `layer` when the shape cannot be GPTQ-packed (in or out not a multiple of 32, in
// not a multiple of the group size, bits not in {2, 3, 4, 8}), or when v1 is asked for a zero of 0.
// What the GPTQ packers need (InputError naming `layer` and the field when unmet): 2/3/4/8 bits, in and
// out multiples of 32, a group size dividing in. The exporter asks these before calibration too.
void check_gptq_bits(int bits, const std::string& layer);
void check_gptq_shape(std::int64_t out, std::int64_t in, std::int64_t group_size, const std::string& layer);

GptqTensors pack_gptq(const QuantizedLinearData& q, int bits, std::int64_t group_size, bool v2, const std::string& layer);
QuantizedLinearData unpack_gptq(const GptqTensors& t, int bits, std::int64_t group_size, bool v2);
// True when every zero point is >= 1, i.e. v1 (zero − 1) can store them.
bool gptq_v1_can_store(const at::Tensor& zeros);

struct CompressedTensorsPacked {
  at::Tensor weight_packed;      // int32 [out, ceil(in/pf)]
  at::Tensor weight_scale;       // fp16 [out, G]
  at::Tensor weight_zero_point;  // int32 [ceil(out/pf), G]; undefined when symmetric
  at::Tensor weight_shape;       // int64 [2] = {out, in}
};

// bits 4 or 8 (what the format's loaders read); InputError naming `layer` otherwise.
CompressedTensorsPacked pack_compressed_tensors(const QuantizedLinearData& q, int bits, bool symmetric, const std::string& layer);
QuantizedLinearData unpack_compressed_tensors(const CompressedTensorsPacked& t, int bits, std::int64_t group_size, bool symmetric);

// W8A8 int-quantized: weight int8 [out, in] and per-channel scale fp16 [out, 1]; needs bits 8,
// symmetric zeros (128) and one group per row, InputError naming `layer` otherwise.
std::pair<at::Tensor, at::Tensor> pack_int8_channel(const QuantizedLinearData& q, const std::string& layer);

// The tensors a pack_* call produces for a linear [out, in] with `groups` scale groups, in the order
// they are written (suffix after "<linear>."), from the shapes alone: an exporter plans its output
// files with it before packing anything. Shape problems are refused here exactly as the packers do.
enum class PackedFormat { kGptq, kPackQuantized, kInt8Channel };
struct PackedTensor {
  std::string suffix;
  c10::ScalarType dtype;
  std::vector<std::int64_t> shape;
};
std::vector<PackedTensor> packed_layout(PackedFormat format, std::int64_t out, std::int64_t in, std::int64_t groups, int bits,
                                        std::int64_t group_size, bool symmetric, const std::string& layer);

// scale · (code − zero) in fp32 [out, in].
at::Tensor dequantize_linear(const QuantizedLinearData& q, std::int64_t group_size);

}  // namespace qforge::storage
