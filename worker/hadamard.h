// Hadamard matrices and the orthogonal rotations built from them (QuaRot; SpinQuant's R1/R2 without
// learning). A Hadamard matrix H of order n has entries ±1 and H Hᵀ = n I; H/√n is orthogonal and spreads
// every coordinate over all others, which removes activation outliers when folded into a model.
//
// Constructions, combined by Kronecker products (H_a ⊗ H_b is Hadamard of order ab):
//   Sylvester: order 2^k;
//   Paley I:   order q + 1 for a prime power q ≡ 3 (mod 4) (q = 11 gives 12, q = 343 = 7³ gives 344);
//   Paley II:  order 2(q + 1) for a prime power q ≡ 1 (mod 4) (q = 17 gives 36);
//   Williamson: order 4w from four symmetric circulant matrices of order w, for the w whose quadruple is
//              listed (43: 172 = 4·43, which Paley does not give).
// Paley I is tried first (28 comes from q = 27 = 3³), then Paley II, then Williamson.
// So 768 = H₁₂ ⊗ H₆₄, 28672 = H₂₈ ⊗ H₁₀₂₄, 11008 = H₃₄₄ ⊗ H₃₂, 172 = H₁₇₂ (stories260K's MLP). Orders
// none of these reach have no Hadamard matrix in this library: rotations of those sizes are seeded random
// orthogonal matrices instead, and say so.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace qforge::worker {

// ±1 Hadamard matrix of order n (float64), or an undefined tensor when no construction above reaches n.
at::Tensor hadamard_matrix(std::int64_t n);
// How hadamard_matrix builds order n ("H12 (Paley I, q=11) x H64 (Sylvester)"), empty when it cannot.
std::string hadamard_construction(std::int64_t n);

enum class RotationKind { kNone, kHadamard, kRandomOrthogonal };
RotationKind parse_rotation_kind(const std::string& name);  // none | hadamard | random-orthogonal
const char* rotation_kind_name(RotationKind kind);

struct Rotation {
  at::Tensor matrix;          // [n, n] orthogonal, float64
  std::string construction;   // what it is, for the output's config
};

// An orthogonal n×n rotation from `seed`: kHadamard gives H·D/√n with D a seeded random ±1 diagonal
// (a randomised Hadamard matrix) where hadamard_matrix(n) exists, else falls back to a random
// orthogonal one; kRandomOrthogonal gives Q of the QR factorisation of a seeded Gaussian matrix (signs
// fixed so the result is unique).
Rotation make_rotation(std::int64_t n, RotationKind kind, std::uint64_t seed);

}  // namespace qforge::worker
