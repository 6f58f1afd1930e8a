#!/usr/bin/env python3
"""Plain-PyTorch twin of `qforge eval`: perplexity of an HF LLaMA folder (FP, or a qforge/plain_job
quantized folder, whose activation quantization is applied as its quantization_config records) on a
text file, GPTQ convention: the whole text tokenized once with one BOS (SentencePiece), non-overlapping
windows of seqlen tokens (tail dropped), NLL of tokens 1..seqlen-1 of each window, ppl = exp(mean NLL).

  plain_eval.py --model DIR --data FILE [--seqlen 256] [--batch 8] [--threads 2] [--max-windows N]
                [--data-format text|tokens] [--tokenizer PATH] [--sdpa] [--json]

The whole model is loaded (fp32) and batches of windows go through all blocks; the logits of one batch
at a time exist. Prints ppl, mean NLL, the wall time of load / tokenize / score and the total, and the
peak RSS (getrusage ru_maxrss), and one JSON line.
"""
import time

T_PROCESS = time.perf_counter()
import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plain_common as pc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--data-format", default="", help="text | tokens (default: tokens for a QFTOKENS file, else text)")
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--seqlen", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8, help="windows per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--sdpa", action="store_true", help="attention by F.scaled_dot_product_attention")
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_import = time.perf_counter() - T_PROCESS
    tm = pc.Timer()

    with tm("load"):
        cfg = pc.Config.load(a.model)
        tensors = pc.read_model_tensors(a.model)
        blocks = [pc.block_from_tensors(tensors, i) for i in range(cfg.num_hidden_layers)]
        aqs = [pc.ActQuantizer(*cfg.act_bits(i)) for i in range(cfg.num_hidden_layers)]
        embed = tensors["model.embed_tokens.weight"].float()
        norm = tensors["model.norm.weight"].float()
        head = embed if cfg.tie_word_embeddings else tensors["lm_head.weight"].float()
        seqlen = a.seqlen or min(2048, cfg.max_position_embeddings)
        rope = pc.rope_tables(cfg, seqlen)
    with tm("tokenize"):
        fmt = a.data_format or ("tokens" if open(a.data, "rb").read(8) == b"QFTOKENS" else "text")
        if fmt == "tokens":
            ids = pc.read_token_file(a.data)
        else:
            ids = pc.encode_text(a.tokenizer or pc.find_tokenizer(a.model), pc.read_text(a.data))
        n = len(ids) // seqlen
        windows = torch.tensor(ids[: n * seqlen], dtype=torch.long).view(n, seqlen)
        if a.max_windows > 0:
            windows = windows[: a.max_windows]
    with tm("score"), torch.no_grad():
        nll = 0.0
        for i in range(0, windows.size(0), a.batch):
            w = windows[i:i + a.batch]
            x = F.embedding(w, embed)
            for blk, aq in zip(blocks, aqs):
                x = pc.block_forward(cfg, blk, x, rope, aq, sdpa=a.sdpa)
            logits = pc.rms_norm(x, norm, cfg.rms_norm_eps) @ head.t()
            nll += F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1),
                                   reduction="sum").item()
    scored = windows.size(0) * (seqlen - 1)
    mean_nll = nll / scored
    total = time.perf_counter() - T_PROCESS
    res = {"impl": "plain-pytorch", "ppl": math.exp(mean_nll), "mean_nll": mean_nll, "tokens": len(ids),
           "windows": windows.size(0), "scored_tokens": scored, "seqlen": seqlen, "batch": a.batch,
           "threads": torch.get_num_threads(), "import_s": t_import, "load_s": tm.acc["load"],
           "tokenize_s": tm.acc["tokenize"], "score_s": tm.acc["score"], "total_s": total,
           "peak_rss_mib": pc.peak_rss_mib()}
    if not a.json:
        print(f"perplexity  {res['ppl']:.4f}\nmean NLL    {mean_nll:.6f} nats\ntokens      {len(ids)} "
              f"({windows.size(0)} windows of {seqlen}, {scored} scored)")
        print(f"time        {total:.2f} s (python+torch import {t_import:.2f}, load {res['load_s']:.2f}, tokenize "
              f"{res['tokenize_s']:.2f}, score {res['score_s']:.2f}: {windows.size(0) * seqlen / res['score_s']:.0f} "
              f"tokens/s, batch {a.batch}, threads {torch.get_num_threads()})\npeak RSS    {res['peak_rss_mib']:.0f} MiB")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
