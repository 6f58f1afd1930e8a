#include "jobs/commands.h"

namespace qforge::jobs {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"quantize", "RTN, OmniQuant or AffineQuant quantization into an HF folder (+ integer sidecar)", run_quantize},
      {"status", "progress of a quantize job directory: units, samples per rank, ETA, last error", run_status},
      {"submit", "run quantize as Slurm batch job(s): sbatch script, signal/requeue handling, chains, sweeps",
       run_submit},
      {"export", "write a quantized folder as GPTQ or compressed-tensors (packed from the integer codes)", run_export},
      {"eval", "perplexity (and KL vs a reference model) on a text, WikiText, C4 or token file", run_eval},
      {"inspect", "print architecture, parameters, dtypes, shards and per-block tensors of a model", run_inspect},
      {"import-llama2c", "convert a llama2.c checkpoint into an HF-layout model folder", run_import_llama2c},
      {"make-synthetic", "write a seeded random LLaMA checkpoint with real shapes (7b, 70b, tiny, ...)",
       run_make_synthetic},
      {"tokenize", "tokenize a text/WikiText/C4 file into a qforge token file", run_tokenize},
  };
  return table;
}

}  // namespace qforge::jobs
