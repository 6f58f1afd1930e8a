#!/usr/bin/env python3
"""The transformers side of the interop tier: independent reference outputs for qforge's tests.

  hf_reference.py make ARCH OUT [--seed S] [--shards] [--dtype float32|bfloat16]
      A small random-weight model of architecture ARCH (llama, llama3, mistral, qwen2, qwen3) built with
      transformers from a config (nothing downloaded: from_config with a seed), saved with save_pretrained
      (--shards: several safetensors files and model.safetensors.index.json, as published models come).
  hf_reference.py logits MODEL OUT_FILE [--seqlen T] [--batch B] [--seed S] [--dequantize] [--dump-weights]
      Token ids and transformers' fp32 logits for them (eager attention), written as safetensors
      {"ids": int64 [B, T], "logits": float32 [B, T, vocab]} (--dump-weights: and every decoder linear's
      weight as the loaded model holds it, under its checkpoint name). --dequantize: a compressed-tensors
      checkpoint is decompressed on load (CompressedTensorsConfig(dequantize=True)), which is how
      transformers runs asymmetric pack-quantized checkpoints on CPU (its compressed path fails on their
      packed zero points: vllm-project/llm-compressor#1618).

  hf_reference.py tokenizer FAMILY OUT_DIR [--train C4.jsonl | --spm tokenizer.model]
      A tokenizer.json with the published structure of FAMILY (llama3, qwen2: byte-level BPEs trained here;
      llama2: SentencePiece converted by transformers).
  hf_reference.py encode TOKENIZER_JSON OUT_FILE --wikitext FILE --c4 FILE
      tokenizers' ids for the WikiText-2 text and each C4 document.

Test-time tool only: qforge itself never runs Python.
"""
import argparse
import sys

import torch
import transformers
from safetensors.torch import save_file

# Small shapes that still exercise what each family adds: GQA everywhere, Qwen2's q/k/v biases, Qwen3's
# q/k norms and a head_dim that is not hidden/heads, Mistral's sliding window (shorter than the test's
# sequences), LLaMA-3's rope scaling.
COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=97, max_position_embeddings=128, rms_norm_eps=1e-5,
              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(rope_theta=10000.0)),
    "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
               dict(rope_theta=500000.0, max_position_embeddings=256,
                    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=16))),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(sliding_window=7, head_dim=16, rope_theta=10000.0)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(rope_theta=1000000.0, use_sliding_window=False, tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(head_dim=24, rope_theta=1000000.0, use_sliding_window=False, attention_bias=False)),
}


def make(args):
    config_cls, model_cls, extra = ARCHS[args.arch]
    torch.manual_seed(args.seed)
    config = config_cls(**{**COMMON, **extra})
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers initialises norms to 1 and biases to 0: make them matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    dtype = getattr(torch, args.dtype)
    model.to(dtype).save_pretrained(args.out, max_shard_size="40KB" if args.shards else "10GB")


def logits(args):
    extra = {}
    if args.dequantize:  # compressed-tensors checkpoints: decompress into plain Linear layers on load
        extra["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                              attn_implementation="eager", **extra).eval()
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seqlen), generator=gen)
    with torch.no_grad():
        out = model(input_ids=ids).logits.float().contiguous()
    tensors = {"ids": ids.contiguous(), "logits": out}
    if args.dump_weights:  # the decoder linears' weights as the loader holds them, named as in the checkpoint
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
                tensors[name + ".weight"] = module.weight.detach().float().contiguous()
    save_file(tensors, args.out)


# The published pre-tokenizer regexes of the families (their tokenizer.json "Split" patterns).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def tokenizer(args):
    """A tokenizer.json with a family's published structure: LLaMA-3 and Qwen2 byte-level BPEs trained
    here on --train (their regex, LLaMA-3's ignore_merges and BOS template, Qwen2's NFC and no BOS), or
    LLaMA-2's SentencePiece model converted by transformers (--spm)."""
    import json
    import os
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    if args.family == "llama2":
        import shutil
        from transformers import LlamaTokenizer
        shutil.copy(args.spm, os.path.join(args.out, "tokenizer.model"))  # from_pretrained converts it
        LlamaTokenizer.from_pretrained(args.out).backend_tokenizer.save(path)
        os.remove(os.path.join(args.out, "tokenizer.model"))
        return
    pattern = LLAMA3_PATTERN if args.family == "llama3" else QWEN2_PATTERN
    tok = Tokenizer(models.BPE())
    if args.family == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
                if args.family == "llama3" else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    with open(args.train, encoding="utf-8") as f:
        lines = [json.loads(line)["text"] for line in f][: args.docs]
    tok.train_from_iterator(lines, trainer=trainer)
    if args.family == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(path)
    if args.family == "llama3":  # as LLaMA-3's file: whole words in the vocabulary skip the merges
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        j["model"]["ignore_merges"] = True
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)


def encode(args):
    """tokenizers' ids (special tokens added as the post-processor says) for the WikiText-2 test text as one
    string and for each C4 document: {"wikitext": [n], "c4": [m], "c4_offsets": [docs + 1]}."""
    import json
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.wikitext, encoding="utf-8") as f:
        wiki = tok.encode(f.read()).ids
    c4, offsets = [], [0]
    with open(args.c4, encoding="utf-8") as f:
        for line in f:
            c4 += tok.encode(json.loads(line)["text"]).ids
            offsets.append(len(c4))
    save_file({"wikitext": torch.tensor(wiki, dtype=torch.int64), "c4": torch.tensor(c4, dtype=torch.int64),
               "c4_offsets": torch.tensor(offsets, dtype=torch.int64)}, args.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("arch", choices=sorted(ARCHS))
    m.add_argument("out")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--shards", action="store_true")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    lg = sub.add_parser("logits")
    lg.add_argument("model")
    lg.add_argument("out")
    lg.add_argument("--seqlen", type=int, default=24)
    lg.add_argument("--batch", type=int, default=2)
    lg.add_argument("--seed", type=int, default=0)
    lg.add_argument("--dequantize", action="store_true")
    lg.add_argument("--dump-weights", action="store_true")
    t = sub.add_parser("tokenizer")
    t.add_argument("family", choices=["llama3", "qwen2", "llama2"])
    t.add_argument("out")
    t.add_argument("--train", help="C4 jsonl to train on (llama3, qwen2)")
    t.add_argument("--docs", type=int, default=300)
    t.add_argument("--vocab", type=int, default=3000)
    t.add_argument("--spm", help="tokenizer.model to convert (llama2)")
    e = sub.add_parser("encode")
    e.add_argument("tokenizer")
    e.add_argument("out")
    e.add_argument("--wikitext", required=True)
    e.add_argument("--c4", required=True)
    args = p.parse_args()
    {"make": make, "logits": logits, "tokenizer": tokenizer, "encode": encode}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
