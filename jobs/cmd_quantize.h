// The option parsing of `qforge quantize`, shared with `qforge submit`, which validates the quantize
// options given after its `--` before anything is submitted.
#pragma once

#include "jobs/commands.h"
#include "jobs/quantize_job.h"

namespace qforge::jobs {

// Parses and validates quantize options (command line plus an optional --config file) exactly as
// `qforge quantize` does, into the spec the job would run. Reads the model's config.json (for the
// default --calib-seqlen) and no weights. Throws InputError naming the flag; --help is an InputError
// here (`qforge quantize --help` prints the usage). Does not apply --threads/--log-level.
QuantizeSpec parse_quantize_spec(const Args& args);

}  // namespace qforge::jobs
