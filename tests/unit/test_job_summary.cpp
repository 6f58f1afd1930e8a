// The end-of-run summary (jobs/job_summary.h) on hand-made reports: unit labels, the worse-unit
// warning, the packed-size ratio and the next commands.
#include <gtest/gtest.h>

#include "jobs/job_summary.h"

namespace qforge {
namespace {

using nlohmann::json;

TEST(JobSummary, UnitsAreLabelledByTheirBlocksAndAWorseUnitIsFlagged) {
  const json report = {{"blocks",
                        {{{"unit", 0}, {"blocks", {0}}, {"initial_loss", 2.0}, {"final_loss", 1.0}},
                         {{"unit", 1}, {"blocks", {1, 2, 3}}, {"initial_loss", 1.0}, {"final_loss", 1.5}},
                         {{"unit", 2}, {"blocks", {4}}}}}};  // RTN-like entry without losses: not listed
  const auto units = jobs::unit_losses(report);
  ASSERT_EQ(units.size(), 2u);
  EXPECT_EQ(units[0].label, "unit 0 (block 0)");
  EXPECT_EQ(units[1].label, "unit 1 (blocks 1-3)");
  EXPECT_FALSE(units[0].worse());
  EXPECT_TRUE(units[1].worse());
  EXPECT_FALSE((jobs::UnitLoss{"u", 1.0, 1.005}.worse()));  // within 1%: noise, not a warning

  jobs::JobSummary s;
  s.out = "/o";
  s.description = "omniquant W4A16 deployable";
  s.files = {{"config.json", 700}, {"model.safetensors", 3 * 1024 * 1024}};
  s.linear_input_bytes = 8 * 1024 * 1024;
  s.linear_packed_bytes = 1024 * 1024;
  s.units = units;
  s.seconds = 3;
  const std::string text = jobs::format_job_summary(s, "/m", "");
  EXPECT_NE(text.find("wrote /o (omniquant W4A16 deployable)"), std::string::npos) << text;
  EXPECT_NE(text.find("700 B"), std::string::npos) << text;
  EXPECT_NE(text.find("3.0 MiB"), std::string::npos) << text;
  EXPECT_NE(text.find("1.0 MiB packed vs 8.0 MiB in the input (8.00x smaller)"), std::string::npos) << text;
  EXPECT_NE(text.find("2 -> 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("1 -> 1.5   WARNING: more than 1% worse than before calibration"), std::string::npos) << text;
  EXPECT_NE(text.find("WARNING: 1 unit(s)"), std::string::npos) << text;
  EXPECT_NE(text.find("qforge eval --model /o --reference /m --data DATA"), std::string::npos) << text;
  EXPECT_NE(text.find("qforge export --model /o --format gptq --out /o-gptq"), std::string::npos) << text;
  s.export_format.clear();  // a result no format takes says why instead
  s.export_refusal = "it rotates activations at run time";
  EXPECT_NE(jobs::format_job_summary(s, "/m", "").find("(no export format takes this result: it rotates activations"),
            std::string::npos);
  EXPECT_NE(jobs::format_job_summary(s, "/m", "/o-ct").find("(exported to /o-ct)"), std::string::npos);
}

}  // namespace
}  // namespace qforge
