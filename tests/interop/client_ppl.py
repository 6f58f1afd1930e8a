#!/usr/bin/env python3
"""Real clients scoring qforge's exports, outside ctest (each needs its own environment, see
scripts/vllm_check.sh and scripts/gptq_check.sh): perplexity of an exported folder on a qforge token file,
windows cut as `qforge eval` cuts them (consecutive, non-overlapping, SEQLEN tokens; every token but each
window's first predicted).

  client_ppl.py vllm|transformers|gptqmodel MODEL TOKENS.tok SEQLEN [DTYPE]
      prints {"ppl": ..., "tokens": ...} as one JSON line. DTYPE float32 by default (vLLM's CPU W4A16 kernel
      runs in bfloat16/float16 only). transformers loads GPTQ folders through GPTQModel (+ optimum);
      gptqmodel is GPTQModel.load itself, the loader that reads per-block `dynamic` rules.
"""
import json
import math
import os
import struct
import sys


def read_tokens(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"QFTOKENS":
        raise SystemExit(f"{path}: not a qforge token file")
    _version, width, count = struct.unpack("<IIQ", data[8:24])
    if width != 4:
        raise SystemExit(f"{path}: {width}-byte ids are not read here")
    return list(struct.unpack(f"<{count}i", data[24:24 + 4 * count]))


def vllm_nll(model, windows, seqlen, dtype):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    # One generated token is required; it may sit one past the model's positions and is not scored.
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    llm = LLM(model=model, dtype=dtype, max_model_len=seqlen + 1, enforce_eager=True, max_num_seqs=4)
    outs = llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows],
                        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
    for w, out in zip(windows, outs):
        for t, lp in zip(w[1:], out.prompt_logprobs[1:]):
            yield -lp[t].logprob


def causal_lm_nll(m, windows):
    import torch
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w])
            logp = torch.log_softmax(m(input_ids=ids).logits.float()[0, :-1], -1)
            yield from (-logp.gather(1, ids[0, 1:, None])[:, 0]).tolist()


def transformers_nll(model, windows, dtype):
    import torch
    import transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), device_map="cpu").eval()
    yield from causal_lm_nll(m, windows)


def gptqmodel_nll(model, windows, dtype):
    # GPTQModel's own loader: the one that reads `dynamic` (per-block bits); transformers' path does not.
    # Its torch kernel by name: the automatic choice picks one kernel for the base bits (on CPU the fused
    # torch kernel, 4-bit only) and fails on 8-bit blocks.
    import torch
    from gptqmodel import BACKEND, GPTQModel
    m = GPTQModel.load(model, device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=getattr(torch, dtype))
    yield from causal_lm_nll(m.model, windows)


def main():
    engine, model, tokens, seqlen = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dtype = sys.argv[5] if len(sys.argv) > 5 else "float32"
    ids = read_tokens(tokens)
    windows = [ids[i:i + seqlen] for i in range(0, len(ids) // seqlen * seqlen, seqlen)]
    clients = {"vllm": lambda: vllm_nll(model, windows, seqlen, dtype),
               "transformers": lambda: transformers_nll(model, windows, dtype),
               "gptqmodel": lambda: gptqmodel_nll(model, windows, dtype)}
    if engine not in clients:
        raise SystemExit(f"client_ppl.py: unknown engine {engine!r} (one of {', '.join(clients)})")
    nll = list(clients[engine]())
    print(json.dumps({"ppl": math.exp(sum(nll) / len(nll)), "tokens": len(nll)}))


if __name__ == "__main__":
    main()
