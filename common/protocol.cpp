#include "common/protocol.h"

#include "common/error.h"

namespace qforge::protocol {

using nlohmann::json;

namespace {

std::string wrap(const char* type, json body) {
  body["v"] = kVersion;
  body["type"] = type;
  return body.dump();
}

}  // namespace

json to_json(const Task& t) {
  return {{"kind", t.kind}, {"unit", t.unit}, {"attempt", t.attempt}, {"team_ranks", t.team_ranks},
          {"samples", t.samples}, {"input_boundary", t.input_boundary}, {"x_fp_files", t.x_fp_files},
          {"x_q_files", t.x_q_files}, {"write_next", t.write_next}, {"last_unit", t.last_unit},
          {"first_block", t.first_block}, {"num_blocks", t.num_blocks}, {"blocks", t.blocks},
          {"resume_from", t.resume_from}, {"resume_digest", t.resume_digest}};
}

Task task_from_json(const json& j) {
  Task t;
  t.kind = j.at("kind").get<std::string>();
  t.unit = j.at("unit").get<int>();
  t.attempt = j.at("attempt").get<std::int64_t>();
  t.team_ranks = j.at("team_ranks").get<std::vector<int>>();
  t.samples = j.at("samples").get<std::vector<std::int64_t>>();
  t.input_boundary = j.at("input_boundary").get<int>();
  t.x_fp_files = j.at("x_fp_files").get<std::vector<std::string>>();
  t.x_q_files = j.at("x_q_files").get<std::vector<std::string>>();
  t.write_next = j.at("write_next").get<bool>();
  t.last_unit = j.at("last_unit").get<bool>();
  t.first_block = j.at("first_block").get<int>();
  t.num_blocks = j.at("num_blocks").get<int>();
  t.blocks = j.at("blocks").get<std::vector<int>>();
  t.resume_from = j.at("resume_from").get<std::string>();
  t.resume_digest = j.at("resume_digest").get<std::string>();
  return t;
}

std::string encode(const Hello& m) {
  return wrap("hello", {{"rank", m.rank}, {"host", m.host}, {"device", m.device}, {"memory_bytes", m.memory_bytes},
                        {"threads", m.threads}});
}
std::string encode(const Task& m) { return wrap("assign", {{"task", to_json(m)}}); }
std::string encode(const Heartbeat& m) { return wrap("heartbeat", {{"rank", m.rank}, {"unit", m.unit}, {"phase", m.phase}}); }
std::string encode(const Done& m) {
  return wrap("done", {{"rank", m.rank}, {"task", to_json(m.task)}, {"samples", m.samples}, {"files", m.files},
                       {"shard", m.shard}, {"digest", m.digest}, {"report", m.report}, {"peak_rss", m.peak_rss},
                       {"baseline_rss", m.baseline_rss}, {"cache_bytes_written", m.cache_bytes_written},
                       {"cache_bytes_read", m.cache_bytes_read}, {"seconds", m.seconds}, {"stopped", m.stopped}});
}
std::string encode(const Failed& m) { return wrap("failed", {{"rank", m.rank}, {"task", to_json(m.task)}, {"reason", m.reason}}); }
std::string encode(const Shutdown& m) {
  return wrap("shutdown", {{"ok", m.ok}, {"reason", m.reason}, {"abort", m.abort}, {"exit_code", m.exit_code}});
}
std::string encode(const Checkpoint& m) { return wrap("checkpoint", {{"unit", m.unit}, {"attempt", m.attempt}}); }

Message decode(const std::string& bytes, int from_rank) {
  json j;
  try {
    j = json::parse(bytes);
  } catch (const json::exception& e) {
    throw InternalError("protocol: unreadable message from rank " + std::to_string(from_rank) + ": " + e.what());
  }
  if (!j.is_object() || !j.contains("v") || !j.contains("type")) {
    throw InternalError("protocol: message from rank " + std::to_string(from_rank) + " lacks version/type");
  }
  if (j["v"] != kVersion) {
    throw InternalError("protocol: rank " + std::to_string(from_rank) + " speaks version " + j["v"].dump() +
                        ", this qforge speaks " + std::to_string(kVersion) + " (mixed qforge builds in one job?)");
  }
  return {j["type"].get<std::string>(), std::move(j)};
}

namespace {
void expect(const Message& m, const char* type) {
  if (m.type != type) throw InternalError("protocol: expected " + std::string(type) + ", got " + m.type);
}
}  // namespace

Hello hello_from(const Message& m) {
  expect(m, "hello");
  const json& b = m.body;
  return {b.at("rank").get<int>(), b.at("host").get<std::string>(), b.at("device").get<std::string>(),
          b.at("memory_bytes").get<std::uint64_t>(), b.at("threads").get<int>()};
}
Task task_from(const Message& m) {
  expect(m, "assign");
  return task_from_json(m.body.at("task"));
}
Heartbeat heartbeat_from(const Message& m) {
  expect(m, "heartbeat");
  return {m.body.at("rank").get<int>(), m.body.at("unit").get<int>(), m.body.at("phase").get<std::string>()};
}
Done done_from(const Message& m) {
  expect(m, "done");
  const json& b = m.body;
  Done d;
  d.rank = b.at("rank").get<int>();
  d.task = task_from_json(b.at("task"));
  d.samples = b.at("samples").get<std::int64_t>();
  d.files = b.at("files").get<std::vector<std::string>>();
  d.shard = b.at("shard").get<std::string>();
  d.digest = b.at("digest").get<std::string>();
  d.report = b.at("report");
  d.peak_rss = b.at("peak_rss").get<std::uint64_t>();
  d.baseline_rss = b.at("baseline_rss").get<std::uint64_t>();
  d.cache_bytes_written = b.at("cache_bytes_written").get<std::uint64_t>();
  d.cache_bytes_read = b.at("cache_bytes_read").get<std::uint64_t>();
  d.seconds = b.at("seconds").get<double>();
  d.stopped = b.at("stopped").get<bool>();
  return d;
}
Failed failed_from(const Message& m) {
  expect(m, "failed");
  return {m.body.at("rank").get<int>(), task_from_json(m.body.at("task")), m.body.at("reason").get<std::string>()};
}
Shutdown shutdown_from(const Message& m) {
  expect(m, "shutdown");
  return {m.body.at("ok").get<bool>(), m.body.at("reason").get<std::string>(), m.body.at("abort").get<bool>(),
          m.body.at("exit_code").get<int>()};
}
Checkpoint checkpoint_from(const Message& m) {
  expect(m, "checkpoint");
  return {m.body.at("unit").get<int>(), m.body.at("attempt").get<std::int64_t>()};
}

}  // namespace qforge::protocol
