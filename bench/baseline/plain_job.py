#!/usr/bin/env python3
"""Plain-PyTorch twin of a whole `qforge quantize` job (sequential block-wise OmniQuant/AffineQuant, one
process, everything in memory, as the official loop): HF folder in, quantized HF folder out.

  plain_job.py --model DIR --calib-data FILE --out DIR [--nsamples 16] [--calib-seqlen 256] [--seed 2]
               [--epochs 5] [--method affinequant|omniquant] [--wbits 4] [--abits 4] [--group-size 0]
               [--faithful] [--aug-loss true|false] [--sf X] [--alpha X] [--let-lr X] [--lwc-lr X]
               [--threads 2] [--calib-tokens calibration.tok] [--initial-loss] [--sdpa]

Defaults follow qforge's recipe (worker/recipes.cpp) for the method and bits; the flags override as in
`qforge quantize`. Calibration: the text tokenized once with one BOS (SentencePiece), then
random.seed(seed) and nsamples windows at randint(0, len - seqlen - 1) (jobs/calib_data.cpp), or the
windows of a qforge token file (--calib-tokens). Per block: the FP block on the FP stream gives the
activation maxima (SmoothQuant init) and the target, the FP block on the quantized stream the aug-loss
target; epochs x (nsamples / 1) AdamW steps; fold + quantize; the quantized block (with activation
quantization) on the quantized stream gives the next block's input. The output folder holds config.json
with a qforge quantization_config, model.safetensors (fake-quant weights, folded norms and biases),
quantization.safetensors (codes, fp16 scales, int32 zeros) and the tokenizer: `qforge eval` reads it.

Prints, and writes as the last JSON line: wall time; startup (load, tokenize, draw); per block the fixed
work (everything but the optimiser steps: targets, setup, fold, propagate) and the training time; the
mean step; the write. --initial-loss adds the MSE of the untrained quantized block over all samples
(qforge's initial_loss, a check), timed apart and left out of the fixed work.
"""
import argparse
import json
import os
import shutil
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plain_common as pc  # noqa: E402


def default_recipe(method, wbits, abits, group_size, faithful):
    """worker/recipes.cpp (without the faithful LN matrix, which the baseline does not implement)."""
    weight_only = abits >= 16
    if faithful and method == "affinequant" and weight_only and (wbits <= 2 or (wbits == 3 and group_size == 0)):
        raise SystemExit("this recipe uses qforge's faithful --ln-matrix, which the plain baseline does not implement")
    r = dict(lwc=True, epochs=40 if wbits <= 2 else 20, aug_loss=weight_only and wbits <= 2, let_lr=5e-3, lwc_lr=1e-2,
             alpha=0.5, sf=1.0)
    if method == "omniquant":
        r["let"] = not weight_only
        if abits <= 4:
            r.update(let_lr=1e-3, alpha=0.75)
        return r
    r["let"] = True
    if weight_only:
        small_bits = wbits <= 2 or (wbits == 3 and group_size == 0)
        r["sf"] = 1e-2 if small_bits else 1.0
    else:
        r["sf"] = 0.1
        if abits <= 4:
            r.update(let_lr=1e-3, alpha=0.75)
    return r


def boolean(s):
    return s.lower() in ("1", "true", "yes", "on")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib-data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=0)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--method", default="affinequant", choices=["affinequant", "omniquant"])
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--abits", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=0)
    ap.add_argument("--faithful", action="store_true")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--let", type=boolean)
    ap.add_argument("--lwc", type=boolean)
    ap.add_argument("--aug-loss", type=boolean)
    ap.add_argument("--let-lr", type=float)
    ap.add_argument("--lwc-lr", type=float)
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--sf", type=float)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-tokens", help="read the windows from a qforge token file instead of drawing them")
    ap.add_argument("--initial-loss", action="store_true", help="also compute each block's untrained MSE (a check)")
    ap.add_argument("--sdpa", action="store_true", help="attention by F.scaled_dot_product_attention")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = default_recipe(a.method, a.wbits, a.abits, a.group_size, a.faithful)
    for k in ["epochs", "let", "lwc", "aug_loss", "let_lr", "lwc_lr", "alpha", "sf"]:
        if getattr(a, k) is not None:
            r[k] = getattr(a, k)

    t_start = time.perf_counter()
    tm = pc.Timer()
    with tm("startup"):
        cfg = pc.Config.load(a.model)
        tensors = pc.read_model_tensors(a.model)
        seqlen = a.calib_seqlen or min(2048, cfg.max_position_embeddings)
        if a.calib_tokens:
            ids = torch.tensor(pc.read_token_file(a.calib_tokens), dtype=torch.long).view(-1, seqlen)[: a.nsamples]
        else:
            text_ids = pc.encode_text(pc.find_tokenizer(a.model), pc.read_text(a.calib_data))
            ids = pc.calibration_windows(text_ids, a.nsamples, seqlen, a.seed)
        rope = pc.rope_tables(cfg, seqlen)
        with torch.no_grad():
            x_fp = F.embedding(ids, tensors["model.embed_tokens.weight"].float())
        x_q = x_fp
    n = ids.size(0)
    steps_per_epoch = n  # batch size 1
    aq = pc.ActQuantizer(a.abits)
    out_tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.")}
    sidecar = {}
    blocks = []
    for b in range(cfg.num_hidden_layers):
        rec = {"block": b}
        t_block = time.perf_counter()
        with tm("fixed"):
            fp = pc.block_from_tensors(tensors, b)
            stats = pc.ActStats()
            y_fp = pc.fp_forward_with_stats(cfg, fp, x_fp, rope, stats, sdpa=a.sdpa)
            y_fp2 = pc.map_batches(x_q, 1, lambda x: pc.block_forward(cfg, fp, x, rope, sdpa=a.sdpa)) if r["aug_loss"] else None
            block = pc.QuantBlock(cfg, fp, stats, a.method, a.wbits, a.abits, a.group_size, deployable=not a.faithful,
                                  let=r["let"], lwc=r["lwc"], alpha=r["alpha"], sf=r["sf"])
            opt = pc.make_optimizer(block, r["let_lr"], r["lwc_lr"]) if (r["let"] or r["lwc"]) else None
        t_check = time.perf_counter()
        if a.initial_loss:
            with tm("initial_loss"), torch.no_grad():
                block.smooth_and_quant_temporary()
                rec["initial_loss"] = sum(F.mse_loss(block(x_q[i:i + 1], rope, a.sdpa), y_fp[i:i + 1], reduction="sum").item()
                                          for i in range(n)) / y_fp.numel()
        t_check = time.perf_counter() - t_check
        t_train = time.perf_counter()
        rec["epoch_loss"] = []
        if opt is not None and r["epochs"] > 0:
            for e in range(r["epochs"]):
                block.set_epoch(e, r["epochs"])
                total = 0.0
                for s in range(steps_per_epoch):
                    total += pc.train_step(block, opt, x_q[s:s + 1], y_fp[s:s + 1],
                                           y_fp2[s:s + 1] if y_fp2 is not None else None, rope, a.sdpa)
                rec["epoch_loss"].append(total / steps_per_epoch)
            block.set_epoch(r["epochs"] - 1, r["epochs"])
        rec["train_s"] = time.perf_counter() - t_train
        tm.acc["train"] = tm.acc.get("train", 0.0) + rec["train_s"]
        with tm("fixed"):
            w, side = block.finalize()
            q_out = pc.map_batches(x_q, 1, lambda x: pc.block_forward(cfg, w, x, rope, aq, sdpa=a.sdpa))
            rec["final_loss"] = F.mse_loss(q_out, y_fp).item()
            if block.shifts:  # biases everywhere, as qforge's faithful output (attention_bias, mlp_bias)
                for k in pc.LINEARS:
                    w.setdefault(k + "_bias", torch.zeros(w[k].size(0)))
            out_tensors.update(pc.block_to_tensors(w, b))
            for k, (codes, scales, zeros) in side.items():
                p = f"model.layers.{b}.{pc.HF_LINEAR[k]}."
                sidecar.update({p + "codes": codes, p + "scales": scales, p + "zeros": zeros})
            x_fp, x_q = y_fp, q_out
        rec["unit_s"] = time.perf_counter() - t_block - t_check
        rec["fixed_s"] = rec["unit_s"] - rec["train_s"]
        blocks.append(rec)
        print(f"block {b}: fixed {rec['fixed_s']:.3f} s, train {rec['train_s']:.3f} s "
              f"({1e3 * rec['train_s'] / max(1, r['epochs'] * steps_per_epoch):.1f} ms/step), epoch loss "
              f"{[round(v, 6) for v in rec['epoch_loss']]}, final MSE {rec['final_loss']:.6g}"
              + (f", initial MSE {rec['initial_loss']:.6g}" if "initial_loss" in rec else ""), flush=True)

    with tm("write"):
        os.makedirs(a.out, exist_ok=True)
        j = dict(cfg.raw)
        j["head_dim"] = cfg.head_dim
        shifts = a.faithful and r["let"]
        j["attention_bias"] = bool(shifts)
        j["mlp_bias"] = bool(shifts)
        j["quantization_config"] = {
            "quant_method": "qforge", "method": a.method, "bits": a.wbits, "group_size": a.group_size, "sym": False,
            "act_bits": a.abits, "act_sym": False, "deployable": not a.faithful, "norm_bias": bool(shifts),
            "norm_affine": False, "sidecar": "quantization.safetensors", "block_overrides": {},
            "calibration": {"data": os.path.basename(a.calib_data), "nsamples": n, "seqlen": seqlen, "seed": a.seed,
                            "batch_size": 1, "recipe": "plain-pytorch baseline " + json.dumps(r, sort_keys=True)}}
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump(j, f, indent=2, sort_keys=True)
        pc.write_safetensors(os.path.join(a.out, "model.safetensors"), out_tensors)
        pc.write_safetensors(os.path.join(a.out, "quantization.safetensors"), sidecar,
                             {"format": "pt", "bits": str(a.wbits), "group_size": str(a.group_size), "sym": "false"})
        tok = os.path.join(a.model, "tokenizer.model")
        if os.path.exists(tok):
            shutil.copy(tok, os.path.join(a.out, "tokenizer.model"))
        with open(os.path.join(a.out, "plain_report.json"), "w") as f:
            json.dump({"recipe": r, "blocks": blocks}, f, indent=1)
    wall = time.perf_counter() - t_start
    total_steps = r["epochs"] * steps_per_epoch * cfg.num_hidden_layers if any(b["epoch_loss"] for b in blocks) else 0
    res = {"impl": "plain-pytorch", "wall_s": wall, "startup_s": tm.acc["startup"], "write_s": tm.acc["write"],
           "fixed_s": tm.acc["fixed"], "fixed_per_block_s": tm.acc["fixed"] / cfg.num_hidden_layers,
           "train_s": tm.acc.get("train", 0.0), "ms_per_step": 1e3 * tm.acc.get("train", 0.0) / max(1, total_steps),
           "steps": total_steps, "initial_loss_s": tm.acc.get("initial_loss", 0.0), "blocks": cfg.num_hidden_layers,
           "nsamples": n, "seqlen": seqlen, "threads": torch.get_num_threads(), "peak_rss_mib": pc.peak_rss_mib(),
           "recipe": r, "faithful": a.faithful, "method": a.method, "wbits": a.wbits, "abits": a.abits}
    print(f"plain-pytorch job: {wall:.2f} s wall = startup {res['startup_s']:.2f} + fixed {res['fixed_s']:.2f} "
          f"({res['fixed_per_block_s']:.3f} s/block) + train {res['train_s']:.2f} ({res['ms_per_step']:.1f} ms/step x "
          f"{total_steps}) + write {res['write_s']:.2f}" + (f" + initial-loss check {res['initial_loss_s']:.2f}"
                                                         if a.initial_loss else "")
          + f"; peak RSS {res['peak_rss_mib']:.0f} MiB")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
