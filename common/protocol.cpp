#include "common/protocol.h"

#include "common/error.h"

namespace qforge::protocol {

using nlohmann::json;

namespace {

template <typename T>
json optional_json(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

template <typename T>
std::optional<T> optional_from(const json& j) {
  if (j.is_null()) return std::nullopt;
  return j.get<T>();
}

}  // namespace

// nlohmann/json conversions, found by argument-dependent lookup. `at` throws on a missing field; decode
// turns that into an error naming the sender.
void to_json(json& j, const UnitFile& f) { j = {{"name", f.name}, {"sha256", f.sha256}}; }
void from_json(const json& j, UnitFile& f) {
  f.name = j.at("name").get<std::string>();
  f.sha256 = j.at("sha256").get<std::string>();
}

namespace {

json work_json(const Work& w) {
  json j = {{"kind", kind_name(w)}};
  if (const auto* fp = std::get_if<FpPassWork>(&w)) {
    j["samples"] = fp->samples;
  } else if (const auto* p = std::get_if<ProbeWork>(&w)) {
    j["blocks"] = p->blocks;
    j["samples"] = p->samples;
    j["x_fp_files"] = p->x_fp_files;
  } else {
    const auto& u = std::get<UnitWork>(w);
    j.update({{"unit", u.unit}, {"first_block", u.first_block}, {"num_blocks", u.num_blocks},
              {"x_fp_files", u.x_fp_files}, {"x_q_files", u.x_q_files}, {"write_next", u.write_next},
              {"last_unit", u.last_unit}, {"resume_from", u.resume_from}, {"resume_digest", u.resume_digest}});
  }
  return j;
}

Work work_from(const json& j) {
  const std::string kind = j.at("kind").get<std::string>();
  if (kind == "fp_pass") return FpPassWork{j.at("samples").get<std::vector<std::int64_t>>()};
  if (kind == "probe") {
    return ProbeWork{j.at("blocks").get<std::vector<int>>(), j.at("samples").get<std::vector<std::int64_t>>(),
                     j.at("x_fp_files").get<std::vector<std::string>>()};
  }
  if (kind != "unit") throw std::invalid_argument("unknown work kind '" + kind + "'");
  UnitWork u;
  u.unit = j.at("unit").get<int>();
  u.first_block = j.at("first_block").get<int>();
  u.num_blocks = j.at("num_blocks").get<int>();
  u.x_fp_files = j.at("x_fp_files").get<std::vector<std::string>>();
  u.x_q_files = j.at("x_q_files").get<std::vector<std::string>>();
  u.write_next = j.at("write_next").get<bool>();
  u.last_unit = j.at("last_unit").get<bool>();
  u.resume_from = j.at("resume_from").get<std::string>();
  u.resume_digest = j.at("resume_digest").get<std::string>();
  return u;
}

struct Encoder {
  json operator()(const Hello& m) const {
    return {{"rank", m.rank}, {"host", m.host}, {"device", m.device}, {"memory_bytes", m.memory_bytes},
            {"threads", m.threads}};
  }
  json operator()(const Assign& m) const { return {{"id", m.id}, {"ranks", m.ranks}, {"work", work_json(m.work)}}; }
  json operator()(const Heartbeat& m) const {
    return {{"rank", m.rank}, {"assignment", m.assignment}, {"phase", m.phase}};
  }
  json operator()(const Done& m) const {
    return {{"rank", m.rank}, {"assignment", m.assignment}, {"probed_block", optional_json(m.probed_block)},
            {"samples", m.samples}, {"cache_files", m.cache_files}, {"shard", optional_json(m.shard)},
            {"stopped", m.stopped}, {"checkpoint", optional_json(m.checkpoint)}, {"report", m.report},
            {"peak_rss", m.peak_rss}, {"baseline_rss", m.baseline_rss},
            {"cache_bytes_written", m.cache_bytes_written}, {"cache_bytes_read", m.cache_bytes_read},
            {"seconds", m.seconds}};
  }
  json operator()(const Failed& m) const {
    return {{"rank", m.rank}, {"assignment", m.assignment}, {"reason", m.reason}, {"exit_code", m.exit_code},
            {"damaged_file", optional_json(m.damaged_file)}};
  }
  json operator()(const Shutdown& m) const {
    return {{"ok", m.ok}, {"reason", m.reason}, {"abort", m.abort}, {"exit_code", m.exit_code}};
  }
  json operator()(const Checkpoint& m) const { return {{"assignment", m.assignment}}; }
};

Done done_from(const json& b) {
  Done d;
  d.rank = b.at("rank").get<int>();
  d.assignment = b.at("assignment").get<std::int64_t>();
  d.probed_block = optional_from<int>(b.at("probed_block"));
  d.samples = b.at("samples").get<std::int64_t>();
  d.cache_files = b.at("cache_files").get<std::vector<std::string>>();
  d.shard = optional_from<UnitFile>(b.at("shard"));
  d.stopped = b.at("stopped").get<bool>();
  d.checkpoint = optional_from<UnitFile>(b.at("checkpoint"));
  d.report = b.at("report");
  d.peak_rss = b.at("peak_rss").get<std::uint64_t>();
  d.baseline_rss = b.at("baseline_rss").get<std::uint64_t>();
  d.cache_bytes_written = b.at("cache_bytes_written").get<std::uint64_t>();
  d.cache_bytes_read = b.at("cache_bytes_read").get<std::uint64_t>();
  d.seconds = b.at("seconds").get<double>();
  return d;
}

Message message_from(const std::string& type, const json& b) {
  if (type == "hello") {
    return Hello{b.at("rank").get<int>(), b.at("host").get<std::string>(), b.at("device").get<std::string>(),
                 b.at("memory_bytes").get<std::uint64_t>(), b.at("threads").get<int>()};
  }
  if (type == "assign") {
    return Assign{b.at("id").get<std::int64_t>(), b.at("ranks").get<std::vector<int>>(), work_from(b.at("work"))};
  }
  if (type == "heartbeat") {
    return Heartbeat{b.at("rank").get<int>(), b.at("assignment").get<std::int64_t>(), b.at("phase").get<std::string>()};
  }
  if (type == "done") return done_from(b);
  if (type == "failed") {
    return Failed{b.at("rank").get<int>(), b.at("assignment").get<std::int64_t>(), b.at("reason").get<std::string>(),
                  b.at("exit_code").get<int>(), optional_from<std::string>(b.at("damaged_file"))};
  }
  if (type == "shutdown") {
    return Shutdown{b.at("ok").get<bool>(), b.at("reason").get<std::string>(), b.at("abort").get<bool>(),
                    b.at("exit_code").get<int>()};
  }
  if (type == "checkpoint") return Checkpoint{b.at("assignment").get<std::int64_t>()};
  throw std::invalid_argument("unknown message type '" + type + "'");
}

}  // namespace

const char* type_name(const Message& m) {
  static constexpr const char* kNames[] = {"hello", "assign", "heartbeat", "done", "failed", "shutdown", "checkpoint"};
  static_assert(std::size(kNames) == std::variant_size_v<Message>, "one name per message type");
  return kNames[m.index()];
}

const char* kind_name(const Work& w) {
  static constexpr const char* kNames[] = {"fp_pass", "probe", "unit"};
  static_assert(std::size(kNames) == std::variant_size_v<Work>, "one name per work kind");
  return kNames[w.index()];
}

std::string encode(const Message& m) {
  json body = std::visit(Encoder{}, m);
  body["v"] = kVersion;
  body["type"] = type_name(m);
  return body.dump();
}

Message decode(const std::string& bytes, int from_rank) {
  const std::string from = "protocol: message from rank " + std::to_string(from_rank);
  json j;
  try {
    j = json::parse(bytes);
  } catch (const json::exception& e) {
    throw InternalError(from + " is not JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("v") || !j.contains("type") || !j["type"].is_string()) {
    throw InternalError(from + " lacks version/type");
  }
  if (j["v"] != kVersion) {
    throw InternalError("protocol: rank " + std::to_string(from_rank) + " speaks version " + j["v"].dump() +
                        ", this qforge speaks " + std::to_string(kVersion) + " (mixed qforge builds in one job?)");
  }
  const std::string type = j["type"].get<std::string>();
  try {
    return message_from(type, j);
  } catch (const std::exception& e) {
    throw InternalError(from + " is not a valid " + type + " message: " + e.what());
  }
}

}  // namespace qforge::protocol
