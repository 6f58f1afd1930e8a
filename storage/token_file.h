// Pre-tokenized token files: the way to use qforge with any tokenizer.
//
// Format (all little-endian), version 1:
//   offset 0   8 bytes   magic "QFTOKENS"
//   offset 8   u32       version = 1
//   offset 12  u32       bytes per id = 4
//   offset 16  u64       count
//   offset 24  count x i32 token ids, used exactly as stored (include the BOS yourself)
// The file size must be exactly 24 + 4 * count. Python writer:
//   ids = np.asarray(ids, dtype='<i4'); f.write(b'QFTOKENS' + struct.pack('<IIQ', 1, 4, len(ids)) + ids.tobytes())
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace qforge::storage {

namespace fs = std::filesystem;

// True if the file starts with the token-file magic (used to auto-detect --data-format tokens).
bool is_token_file(const fs::path& path);
// InputError naming the file and field for a bad magic, version, id width or size.
std::vector<std::int32_t> read_token_file(const fs::path& path);
// Atomic write.
// The same for a token file's bytes (`source` names them in errors): the parser alone, no file I/O
// (fuzz/fuzz_token_file.cpp drives it).
std::vector<std::int32_t> parse_token_file(const std::string& bytes, const std::string& source);
void write_token_file(const fs::path& path, const std::vector<std::int32_t>& ids);

}  // namespace qforge::storage
