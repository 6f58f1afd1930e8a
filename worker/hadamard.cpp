#include "worker/hadamard.h"

#include <ATen/ATen.h>

#include <vector>

#include "common/error.h"

namespace qforge::worker {

namespace {

// GF(q), q = p^k: elements are the integers 0..q-1 read as base-p digit vectors (polynomials of degree
// < k), multiplied modulo a monic irreducible polynomial found by search.
class GaloisField {
 public:
  GaloisField(std::int64_t p, int k) : p_(p), k_(k) {
    q_ = 1;
    for (int i = 0; i < k; ++i) q_ *= p;
    modulus_ = find_irreducible();
  }
  std::int64_t size() const { return q_; }
  std::int64_t sub(std::int64_t a, std::int64_t b) const {
    std::int64_t out = 0, place = 1;
    for (int i = 0; i < k_; ++i, a /= p_, b /= p_, place *= p_) out += ((a % p_ - b % p_ + p_) % p_) * place;
    return out;
  }
  std::int64_t mul(std::int64_t a, std::int64_t b) const { return from_poly(mul_mod(to_poly(a), to_poly(b), modulus_)); }
  // Quadratic character: 0 for 0, 1 for a non-zero square, -1 otherwise (Euler's criterion a^((q-1)/2)).
  int chi(std::int64_t a) const {
    if (a == 0) return 0;
    std::int64_t r = 1, base = a, e = (q_ - 1) / 2;
    for (; e > 0; e >>= 1, base = mul(base, base)) {
      if (e & 1) r = mul(r, base);
    }
    return r == 1 ? 1 : -1;
  }

 private:
  using Poly = std::vector<std::int64_t>;  // coefficients, lowest degree first
  Poly to_poly(std::int64_t a) const {
    Poly c(static_cast<std::size_t>(k_));
    for (auto& x : c) x = a % p_, a /= p_;
    return c;
  }
  std::int64_t from_poly(const Poly& c) const {
    std::int64_t out = 0;
    for (std::size_t i = c.size(); i-- > 0;) out = out * p_ + c[i];
    return out;
  }
  // a·b reduced modulo the monic m (degree k).
  Poly mul_mod(const Poly& a, const Poly& b, const Poly& m) const {
    Poly prod(2 * static_cast<std::size_t>(k_), 0);
    for (std::size_t i = 0; i < a.size(); ++i) {
      for (std::size_t j = 0; j < b.size(); ++j) prod[i + j] = (prod[i + j] + a[i] * b[j]) % p_;
    }
    for (std::size_t d = prod.size(); d-- > static_cast<std::size_t>(k_);) {
      const std::int64_t f = prod[d];
      if (f == 0) continue;
      for (int i = 0; i <= k_; ++i) {
        const std::size_t at = d - static_cast<std::size_t>(k_) + static_cast<std::size_t>(i);
        prod[at] = ((prod[at] - f * m[static_cast<std::size_t>(i)]) % p_ + p_) % p_;
      }
    }
    prod.resize(static_cast<std::size_t>(k_));
    return prod;
  }
  // A monic irreducible polynomial of degree k: for k <= 3 one without a root; for larger k one modulo
  // which every non-zero element has an inverse (brute force; q is small here).
  Poly find_irreducible() const {
    for (std::int64_t low = 0; low < q_; ++low) {
      Poly m = to_poly(low);
      m.push_back(1);
      if (k_ == 1 || field_ok(m)) return m;
    }
    throw InternalError("no irreducible polynomial found for GF(" + std::to_string(q_) + ")");
  }
  bool field_ok(const Poly& m) const {
    if (k_ <= 3) {  // a polynomial of degree 2 or 3 is irreducible exactly when it has no root in GF(p)
      for (std::int64_t x = 0; x < p_; ++x) {
        std::int64_t v = 0;
        for (std::size_t i = m.size(); i-- > 0;) v = (v * x + m[i]) % p_;
        if (v == 0) return false;
      }
      return true;
    }
    for (std::int64_t a = 1; a < q_; ++a) {
      bool inverse = false;
      for (std::int64_t b = 1; b < q_ && !inverse; ++b) inverse = from_poly(mul_mod(to_poly(a), to_poly(b), m)) == 1;
      if (!inverse) return false;
    }
    return true;
  }
  std::int64_t p_;
  int k_;
  std::int64_t q_ = 1;
  Poly modulus_;
};

// q = p^k with p prime (k >= 1), or false.
bool prime_power(std::int64_t q, std::int64_t* p, int* k) {
  if (q < 2) return false;
  for (std::int64_t d = 2; d * d <= q; ++d) {
    if (q % d) continue;
    int e = 0;
    while (q % d == 0) q /= d, ++e;
    if (q != 1) return false;
    *p = d, *k = e;
    return true;
  }
  *p = q, *k = 1;
  return true;
}

// Jacobsthal matrix Q_ij = χ(x_j - x_i) of GF(q).
std::vector<std::vector<int>> jacobsthal(std::int64_t p, int k) {
  const GaloisField f(p, k);
  const std::int64_t q = f.size();
  std::vector<int> chi(static_cast<std::size_t>(q));
  for (std::int64_t a = 0; a < q; ++a) chi[a] = f.chi(a);
  std::vector<std::vector<int>> m(static_cast<std::size_t>(q), std::vector<int>(static_cast<std::size_t>(q)));
  for (std::int64_t i = 0; i < q; ++i) {
    for (std::int64_t j = 0; j < q; ++j) m[i][j] = chi[f.sub(j, i)];
  }
  return m;
}

at::Tensor paley1(std::int64_t p, int k) {  // order q + 1, q ≡ 3 (mod 4): I + [[0, 1ᵀ], [-1, Q]]
  const auto q = jacobsthal(p, k);
  const std::int64_t n = static_cast<std::int64_t>(q.size()) + 1;
  at::Tensor h = at::eye(n, at::kDouble);
  auto a = h.accessor<double, 2>();
  for (std::int64_t i = 1; i < n; ++i) {
    a[0][i] += 1, a[i][0] -= 1;
    for (std::int64_t j = 1; j < n; ++j) a[i][j] += q[i - 1][j - 1];
  }
  return h;
}

at::Tensor paley2(std::int64_t p, int k) {  // order 2(q + 1), q ≡ 1 (mod 4)
  const auto q = jacobsthal(p, k);
  const std::int64_t m = static_cast<std::int64_t>(q.size()) + 1;
  at::Tensor c = at::zeros({m, m}, at::kDouble);
  auto a = c.accessor<double, 2>();
  for (std::int64_t i = 1; i < m; ++i) {
    a[0][i] = a[i][0] = 1;
    for (std::int64_t j = 1; j < m; ++j) a[i][j] = q[i - 1][j - 1];
  }
  const at::Tensor plus = at::tensor({1.0, -1.0, -1.0, -1.0}, at::kDouble).view({2, 2});
  const at::Tensor eye2 = at::tensor({1.0, 1.0, 1.0, -1.0}, at::kDouble).view({2, 2});
  return at::kron(c, plus) + at::kron(at::eye(m, at::kDouble), eye2);
}

at::Tensor sylvester(std::int64_t n) {
  at::Tensor h = at::ones({1, 1}, at::kDouble);
  const at::Tensor h2 = at::tensor({1.0, 1.0, 1.0, -1.0}, at::kDouble).view({2, 2});
  for (std::int64_t m = 1; m < n; m *= 2) h = at::kron(h, h2);
  return h;
}

// Williamson matrices: four symmetric circulant ±1 matrices A, B, C, D of order w with
// AAᵀ + BBᵀ + CCᵀ + DDᵀ = 4w·I give the Hadamard matrix of order 4w
//   [[ A,  B,  C,  D], [-B,  A, -D,  C], [-C,  D,  A, -B], [-D, -C,  B,  A]].
// First rows of the quadruples known here (mathematical data from the literature: order 43 as listed in
// Hall, Combinatorial Theory, 1983, and SageMath's williamson_type_quadruples_smallcases). 4·43 = 172 is
// the order Paley does not reach that the models need (stories260K's MLP, and 11008 = 172·64).
struct WilliamsonQuadruple {
  std::int64_t w;
  const char* rows[4];
};
constexpr WilliamsonQuadruple kWilliamson[] = {
    {43,
     {"++---++++-+--+--++--------++--+--+-++++---+", "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
      "++-++++++----+-+--++-++-++--+-+----++++++-+", "+---++--++++-+-+++-++--++-+++-+-++++--++---"}},
};

const WilliamsonQuadruple* williamson_of(std::int64_t w) {
  for (const auto& q : kWilliamson) {
    if (q.w == w) return &q;
  }
  return nullptr;
}

at::Tensor circulant(const char* row, std::int64_t w) {  // row i is the first row shifted right by i
  at::Tensor c = at::empty({w, w}, at::kDouble);
  auto a = c.accessor<double, 2>();
  for (std::int64_t i = 0; i < w; ++i) {
    for (std::int64_t j = 0; j < w; ++j) a[i][j] = row[((j - i) % w + w) % w] == '+' ? 1.0 : -1.0;
  }
  return c;
}

at::Tensor williamson(const WilliamsonQuadruple& q) {
  const at::Tensor a = circulant(q.rows[0], q.w), b = circulant(q.rows[1], q.w), c = circulant(q.rows[2], q.w),
                   d = circulant(q.rows[3], q.w);
  return at::cat({at::cat({a, b, c, d}, 1), at::cat({-b, a, -d, c}, 1), at::cat({-c, d, a, -b}, 1),
                  at::cat({-d, -c, b, a}, 1)},
                 0);
}

// How order n is built: a base of order m (Sylvester when m is a power of two, else Paley I or II over
// GF(p^k), else Williamson) times Sylvester(rest).
struct Recipe {
  enum Kind { kSylvester, kPaley1, kPaley2, kWilliamson } kind = kSylvester;
  std::int64_t m = 1, rest = 1, p = 0;
  int k = 0;
  std::string describe() const {
    std::string base = "H" + std::to_string(m) + " (";
    switch (kind) {
      case kSylvester: return "H" + std::to_string(m * rest) + " (Sylvester)";
      case kPaley1: base += "Paley I, q=" + std::to_string(m - 1) + ")"; break;
      case kPaley2: base += "Paley II, q=" + std::to_string(m / 2 - 1) + ")"; break;
      case kWilliamson: base += "Williamson, w=" + std::to_string(m / 4) + ")"; break;
    }
    return rest > 1 ? base + " x H" + std::to_string(rest) + " (Sylvester)" : base;
  }
};

// Paley factors are kept small (a Jacobsthal matrix of order q is built element by element).
constexpr std::int64_t kMaxPaleyOrder = 4096;

bool plan(std::int64_t n, Recipe* r) {
  if (n < 1) return false;
  std::int64_t odd = n, two = 1;
  while (odd % 2 == 0) odd /= 2, two *= 2;
  if (odd == 1) {
    *r = {Recipe::kSylvester, 1, n, 0, 0};
    return true;
  }
  // Hadamard orders above 2 are multiples of 4, and so are Paley orders: m = odd·4·2^j.
  for (std::int64_t m = odd * 4, rest = two / 4; rest >= 1 && m <= kMaxPaleyOrder; m *= 2, rest /= 2) {
    std::int64_t p = 0;
    int k = 0;
    if (prime_power(m - 1, &p, &k) && (m - 1) % 4 == 3) {
      *r = {Recipe::kPaley1, m, rest, p, k};
      return true;
    }
    if (prime_power(m / 2 - 1, &p, &k) && (m / 2 - 1) % 4 == 1) {
      *r = {Recipe::kPaley2, m, rest, p, k};
      return true;
    }
    if (m % 4 == 0 && williamson_of(m / 4)) {
      *r = {Recipe::kWilliamson, m, rest, 0, 0};
      return true;
    }
  }
  return false;
}

}  // namespace

at::Tensor hadamard_matrix(std::int64_t n) {
  Recipe r;
  if (!plan(n, &r)) return {};
  if (r.kind == Recipe::kSylvester) return sylvester(n);
  const at::Tensor base = r.kind == Recipe::kPaley1   ? paley1(r.p, r.k)
                          : r.kind == Recipe::kPaley2 ? paley2(r.p, r.k)
                                                      : williamson(*williamson_of(r.m / 4));
  return r.rest > 1 ? at::kron(base, sylvester(r.rest)) : base;
}

std::string hadamard_construction(std::int64_t n) {
  Recipe r;
  return plan(n, &r) ? r.describe() : "";
}

RotationKind parse_rotation_kind(const std::string& name) {
  if (name == "none") return RotationKind::kNone;
  if (name == "hadamard") return RotationKind::kHadamard;
  if (name == "random-orthogonal") return RotationKind::kRandomOrthogonal;
  throw InputError("--rotate", "", "'" + name + "' is not none, hadamard or random-orthogonal");
}

const char* rotation_kind_name(RotationKind kind) {
  switch (kind) {
    case RotationKind::kNone: return "none";
    case RotationKind::kHadamard: return "hadamard";
    case RotationKind::kRandomOrthogonal: return "random-orthogonal";
  }
  return "?";
}

Rotation make_rotation(std::int64_t n, RotationKind kind, std::uint64_t seed) {
  QF_CHECK(kind != RotationKind::kNone && n >= 1, "make_rotation needs a rotation kind and a size");
  at::Generator gen = at::detail::createCPUGenerator(seed);
  if (kind == RotationKind::kHadamard) {
    const std::string how = hadamard_construction(n);
    if (!how.empty()) {
      const at::Tensor h = hadamard_matrix(n);
      const at::Tensor signs = at::randint(0, 2, {n}, gen, at::kDouble) * 2 - 1;
      return {h * signs.unsqueeze(0) / std::sqrt(static_cast<double>(n)),
              "randomised Hadamard " + how + ", seed " + std::to_string(seed)};
    }
  }
  const at::Tensor g = at::randn({n, n}, gen, at::kDouble);
  auto [q, r] = at::linalg_qr(g);
  q = q * at::sign(r.diagonal()).unsqueeze(0);
  const std::string why =
      kind == RotationKind::kHadamard ? " (no Hadamard matrix of order " + std::to_string(n) + " is built here)" : "";
  return {q, "random orthogonal (QR of a Gaussian), seed " + std::to_string(seed) + why};
}

}  // namespace qforge::worker
