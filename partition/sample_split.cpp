#include "partition/sample_split.h"

#include "common/error.h"

namespace qforge::partition {

namespace {

// Start and length of piece r when `n` items are split in `k` near-equal contiguous pieces.
std::pair<std::int64_t, std::int64_t> piece(std::int64_t n, int k, int r) {
  const std::int64_t base = n / k, extra = n % k;
  const std::int64_t len = base + (r < extra ? 1 : 0);
  const std::int64_t start = r * base + std::min<std::int64_t>(r, extra);
  return {start, len};
}

}  // namespace

std::int64_t local_batch(std::int64_t batch, int team_size, int r) { return piece(batch, team_size, r).second; }

std::vector<std::int64_t> team_rows(std::int64_t samples, std::int64_t batch, int team_size, int r) {
  QF_CHECK(team_size >= 1 && r >= 0 && r < team_size && batch >= 1, "bad team split");
  const std::int64_t steps = samples / batch;
  std::vector<std::int64_t> rows;
  const auto [off, len] = piece(batch, team_size, r);
  for (std::int64_t s = 0; s < steps; ++s) {
    for (std::int64_t i = 0; i < len; ++i) rows.push_back(s * batch + off + i);
  }
  const auto [loff, llen] = piece(samples - steps * batch, team_size, r);
  for (std::int64_t i = 0; i < llen; ++i) rows.push_back(steps * batch + loff + i);
  return rows;
}

std::vector<std::int64_t> even_share(const std::vector<std::int64_t>& ids, int parts, int r) {
  const auto [off, len] = piece(static_cast<std::int64_t>(ids.size()), parts, r);
  return {ids.begin() + off, ids.begin() + off + len};
}

}  // namespace qforge::partition
