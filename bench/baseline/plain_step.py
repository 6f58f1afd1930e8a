#!/usr/bin/env python3
"""Plain-PyTorch twin of bench/bench_calib_step: one optimiser step of block reconstruction (transform +
fake-quantize weights with LWC, quantized forward with per-token activation quantization, MSE to the FP
block output, backward, AdamW over the transform and clipping parameters) on a synthetic LLaMA block.

  plain_step.py [--shape small|7b|70b] [--seqlen T] [--steps K] [--method affinequant|omniquant]
                [--wbits 4] [--abits 4] [--threads N] [--sdpa]

The problem is bench_calib_step's, number for number: at seed 0 the same LibTorch generator draws the
same weights (N(0, 0.02^2), unit norms) and the same input x [1, T, H]; statistics and the target come
from the FP block on x; the deployable transforms (qforge's default) at bench_calib_step's settings (LET
and LWC on, alpha 0.5, sf 1, lr 5e-3 / 1e-2, epoch 10 of 20's band mask, no aug loss). One warm-up step,
then K timed steps. Prints the same lines as bench_calib_step (ms/step, tokens/s, GFLOP/s and its share of
a [T, H] x [H, I] fp32 GEMM timed in the same process) and one JSON line.
"""
import argparse
import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plain_common as pc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="7b", choices=sorted(pc.SHAPES))
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--method", default="affinequant", choices=["affinequant", "omniquant"])
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--abits", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sdpa", action="store_true", help="attention by F.scaled_dot_product_attention (default: "
                    "explicit matmul/softmax, as the official QuantMatMul; qforge uses the fused kernel)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = pc.shape_config(a.shape)
    T = a.seqlen

    torch.manual_seed(0)
    fp = pc.random_block(cfg, 0.02, 0.0)
    x = torch.randn(1, T, cfg.hidden_size)
    rope = pc.rope_tables(cfg, T)
    stats = pc.ActStats()
    y = pc.fp_forward_with_stats(cfg, fp, x, rope, stats, sdpa=a.sdpa)

    block = pc.QuantBlock(cfg, fp, stats, a.method, a.wbits, a.abits, deployable=True, alpha=0.5, sf=1.0)
    opt = pc.make_optimizer(block, 5e-3, 1e-2)
    block.set_epoch(10, 20)
    loss0 = pc.train_step(block, opt, x, y, None, rope, a.sdpa)  # warm-up

    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = pc.train_step(block, opt, x, y, None, rope, a.sdpa)
    step_s = (time.perf_counter() - t0) / a.steps

    # Reference rate: [T, H] x [H, I] fp32 GEMM, same process, same threads.
    ga, gb = torch.randn(T, cfg.hidden_size), torch.randn(cfg.hidden_size, cfg.intermediate_size)
    reps = 5
    (ga @ gb).sum().item()
    t0 = time.perf_counter()
    acc = torch.zeros(())
    for _ in range(reps):
        acc = acc + (ga @ gb)[0][0]
    acc.item()
    gemm_flops = 2.0 * T * cfg.hidden_size * cfg.intermediate_size * reps / (time.perf_counter() - t0)

    params = float(cfg.block_parameters())
    attn = 4.0 * T * T * cfg.q_dim
    step_flops = 6.0 * params * T + 3.0 * attn
    paper_steps = 128.0 * 2048.0 / T * 20.0
    print(f"plain-pytorch shape {a.shape} (hidden {cfg.hidden_size}, inter {cfg.intermediate_size}, heads "
          f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}, {params / 1e6:.0f}M block params), {a.method} "
          f"W{a.wbits}A{a.abits}, seqlen {T}, threads {torch.get_num_threads()}, device cpu, compute fp32"
          f"{', sdpa' if a.sdpa else ''}")
    print(f"calibration step: {step_s * 1e3:.1f} ms/step, {T / step_s:.0f} tokens/s, {step_flops / step_s / 1e9:.1f} "
          f"GFLOP/s = {100 * step_flops / step_s / gemm_flops:.1f}% of the fp32 GEMM rate measured here "
          f"({gemm_flops / 1e9:.1f} GFLOP/s)")
    print(f"projected per block for 128 x 2048 tokens x 20 epochs (at this seqlen's rate): {paper_steps * step_s:.0f} s "
          f"({paper_steps * step_s / 3600:.1f} h); x32 blocks = {32 * paper_steps * step_s / 3600:.1f} h")
    print(f"loss: warm-up step {loss0:.6g}, last step {loss:.6g}")
    print(json.dumps({"impl": "plain-pytorch", "shape": a.shape, "method": a.method, "wbits": a.wbits, "abits": a.abits,
                      "device": "cpu", "compute_dtype": "fp32", "seqlen": T, "steps": a.steps,
                      "ms_per_step": step_s * 1e3, "tokens_per_s": T / step_s, "step_gflops": step_flops / step_s / 1e9,
                      "gemm_gflops": gemm_flops / 1e9, "fraction_of_gemm": step_flops / step_s / gemm_flops,
                      "paper_block_s": paper_steps * step_s, "loss_first": loss0, "loss_last": loss,
                      "threads": torch.get_num_threads(), "sdpa": a.sdpa}))


if __name__ == "__main__":
    main()
