"""Plain-PyTorch baseline of qforge's calibration work (issue 15): shared pieces.

A straightforward Python program, shaped like the official OmniQuant/AffineQuant loop (a LLaMA block
module, fake-quant wrappers, LET/LWC/affine parameters trained by AdamW on the MSE to the FP block
output), written to do the same arithmetic qforge does (worker/llama_block.cpp, worker/quantizer.cpp,
worker/block_transforms.cpp, worker/calibrator.cpp), so qforge's times can be reported as a ratio to it.
It is a yardstick: frozen once committed, never tuned against qforge.

Only torch and (for text) sentencepiece are used: no transformers model classes, no numpy.
"""
import ctypes
import json
import math
import os
import random
import resource
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------
# Files: safetensors, config.json, token files, tokenizer
# ----------------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def read_safetensors(path):
    """{name: tensor} of one safetensors file (tensors share one buffer read from the file)."""
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    n = struct.unpack("<Q", bytes(buf[:8]))[0]
    header = json.loads(bytes(buf[8:8 + n]))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        count = (e - b) // torch.empty((), dtype=dtype).element_size()
        t = torch.frombuffer(buf, dtype=dtype, count=count, offset=base + b) if count else torch.empty(0, dtype=dtype)
        out[name] = t.view(info["shape"])
    return out


def write_safetensors(path, tensors, metadata=None):
    """Sorted names, header padded with spaces to 8 bytes (qforge's writer does the same)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + nbytes]}
        blobs.append(ctypes.string_at(t.data_ptr(), nbytes) if nbytes else b"")
        off += nbytes
    header["__metadata__"] = metadata or {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_model_tensors(folder):
    """Every tensor of an HF folder (model.safetensors or the shards named by model.safetensors.index.json)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(read_safetensors(os.path.join(folder, f)))
    return out


class Config:
    """The LLaMA fields of an HF config.json that the block and model need."""

    def __init__(self, j):
        self.raw = dict(j)
        self.hidden_size = j["hidden_size"]
        self.intermediate_size = j["intermediate_size"]
        self.num_hidden_layers = j.get("num_hidden_layers", 1)
        self.num_attention_heads = j["num_attention_heads"]
        self.num_key_value_heads = j.get("num_key_value_heads") or self.num_attention_heads
        self.head_dim = j.get("head_dim") or self.hidden_size // self.num_attention_heads
        self.rms_norm_eps = j.get("rms_norm_eps", 1e-6)
        self.rope_theta = j.get("rope_theta", 10000.0)
        self.max_position_embeddings = j.get("max_position_embeddings", 2048)
        self.vocab_size = j.get("vocab_size", 32000)
        self.tie_word_embeddings = j.get("tie_word_embeddings", False)
        self.bos_token_id = j.get("bos_token_id", 1)
        self.quant = j.get("quantization_config")
        if j.get("rope_scaling"):
            # The baseline is a yardstick for the benchmarked models (ref-6m, the synthetic shapes), which
            # use plain RoPE; qforge itself implements the scaled variants (worker/rope.cpp).
            raise SystemExit("config.json: rope_scaling is set; the plain baseline implements unscaled RoPE "
                             "only (the benchmarked models use none)")

    @staticmethod
    def load(folder):
        with open(os.path.join(folder, "config.json")) as f:
            return Config(json.load(f))

    @property
    def q_dim(self):
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self):
        return self.num_key_value_heads * self.head_dim

    def block_parameters(self):
        h, f = self.hidden_size, self.intermediate_size
        return 2 * h + self.q_dim * h + 2 * self.kv_dim * h + h * self.q_dim + 3 * f * h

    def act_bits(self, block):
        """Activation bits of a quantized folder's block (16: none), as qforge's QuantConfig reads them."""
        q = self.quant
        if not q or q.get("quant_method", "qforge") != "qforge":
            return 16, False
        o = q.get("block_overrides", {}).get(str(block), {})
        return o.get("act_bits") or q.get("act_bits", 16), q.get("act_sym", False)


# Synthetic block shapes of bench_calib_step (--shape); "small" is ref-6m's block.
SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=768, num_attention_heads=8, num_key_value_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8),
}


def shape_config(shape):
    j = dict(num_hidden_layers=1, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-6)
    j.update(SHAPES[shape])
    return Config(j)


def find_tokenizer(folder):
    p = os.path.join(folder, "tokenizer.model")
    if not os.path.exists(p):
        raise SystemExit(f"{folder} has no tokenizer.model")
    return p


def encode_text(tokenizer_path, text):
    """Whole text encoded once with one BOS (qforge's SentencePiece tokenizer, add_bos = true)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    return [sp.bos_id()] + sp.encode(text)


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def read_token_file(path):
    """qforge's token file: "QFTOKENS", u32 version 1, u32 id width 4, u64 count, int32 ids."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"QFTOKENS", path
    _, width, count = struct.unpack("<IIQ", data[8:24])
    assert width == 4
    return list(struct.unpack(f"<{count}i", data[24:24 + 4 * count]))


def calibration_windows(ids, nsamples, seqlen, seed):
    """GPTQ/OmniQuant calibration sampling, as jobs/calib_data.cpp: random.seed(seed), then for each sample
    i = randint(0, len - seqlen - 1) and the window ids[i:i + seqlen]."""
    rng = random.Random(seed)
    out = []
    for _ in range(nsamples):
        i = rng.randint(0, len(ids) - seqlen - 1)
        out.append(ids[i:i + seqlen])
    return torch.tensor(out, dtype=torch.long)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    """Accumulates wall time per named phase."""

    def __init__(self):
        self.acc = {}

    def __call__(self, name):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *a):
                timer.acc[name] = timer.acc.get(name, 0.0) + time.perf_counter() - self.t0
        return _Phase()


# ----------------------------------------------------------------------------------------------------
# The LLaMA block (HF semantics) with optional per-token activation fake quantization
# ----------------------------------------------------------------------------------------------------

LINEARS = ["q", "k", "v", "o", "gate", "up", "down"]
HF_LINEAR = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def block_from_tensors(tensors, i, dtype=torch.float32):
    """Block i of an HF checkpoint as {input_norm, post_norm, q..down, <lin>_bias, input_norm_bias, ...}."""
    p = f"model.layers.{i}."
    w = {"input_norm": tensors[p + "input_layernorm.weight"], "post_norm": tensors[p + "post_attention_layernorm.weight"]}
    for n in ["input", "post"]:
        hf = p + ("input_layernorm" if n == "input" else "post_attention_layernorm")
        if hf + ".bias" in tensors:
            w[n + "_norm_bias"] = tensors[hf + ".bias"]
        if hf + ".affine_inverse" in tensors:
            w[n + "_norm_inverse"] = tensors[hf + ".affine_inverse"]
    for k in LINEARS:
        w[k] = tensors[p + HF_LINEAR[k] + ".weight"]
        if p + HF_LINEAR[k] + ".bias" in tensors:
            w[k + "_bias"] = tensors[p + HF_LINEAR[k] + ".bias"]
    return {k: v.to(dtype) for k, v in w.items()}


def block_to_tensors(w, i):
    p = f"model.layers.{i}."
    out = {p + "input_layernorm.weight": w["input_norm"], p + "post_attention_layernorm.weight": w["post_norm"]}
    for n, hf in [("input", "input_layernorm"), ("post", "post_attention_layernorm")]:
        if n + "_norm_bias" in w:
            out[p + hf + ".bias"] = w[n + "_norm_bias"]
    for k in LINEARS:
        out[p + HF_LINEAR[k] + ".weight"] = w[k]
        if k + "_bias" in w:
            out[p + HF_LINEAR[k] + ".bias"] = w[k + "_bias"]
    return out


def random_block(cfg, std=0.02, norm_std=0.0):
    """A block drawn like BlockWeights::random from the global generator (seed it first): norm weights
    1 + N(0, norm_std^2), matrices N(0, std^2), drawn in fp64 in that order and converted to fp32. The
    LibTorch generator is the same in Python and C++, so torch.manual_seed(0) here draws the very
    weights bench_calib_step draws after at::manual_seed(0)."""
    H, I = cfg.hidden_size, cfg.intermediate_size

    def mat(o, i):
        return (torch.randn(o, i, dtype=torch.float64) * std).float()
    w = {"input_norm": (1 + norm_std * torch.randn(H, dtype=torch.float64)).float(),
         "post_norm": (1 + norm_std * torch.randn(H, dtype=torch.float64)).float()}
    for k, (o, i) in [("q", (cfg.q_dim, H)), ("k", (cfg.kv_dim, H)), ("v", (cfg.kv_dim, H)), ("o", (H, cfg.q_dim)),
                      ("gate", (I, H)), ("up", (I, H)), ("down", (H, I))]:
        w[k] = mat(o, i)
    return w


def rope_tables(cfg, seqlen):
    """cos/sin [T, d] (inverse frequencies in fp64 then fp32, as worker/rope.cpp)."""
    d = cfg.head_dim
    inv = (1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))).float()
    freqs = torch.outer(torch.arange(seqlen, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def apply_rope(x, rope):
    cos, sin = rope
    T, d = x.size(2), x.size(3)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos[:T] + torch.cat([-x2, x1], -1) * sin[:T]


def round_ste(x):
    return (x.round() - x).detach() + x


class ActQuantizer(nn.Module):
    """Dynamic per-token (last dimension) asymmetric/symmetric fake quantization with the STE; identity at 16 bits."""

    def __init__(self, bits=16, sym=False):
        super().__init__()
        self.bits, self.sym = bits, sym

    def forward(self, x):
        if self.bits >= 16:
            return x
        if self.sym:
            qpos = 2 ** (self.bits - 1) - 1
            s = (x.abs().amax(-1, keepdim=True) / qpos).clamp_min(1e-5)
            return torch.clamp(round_ste(x / s), -qpos - 1, qpos) * s
        qmax = 2 ** self.bits - 1
        xmax, xmin = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
        s = ((xmax - xmin) / qmax).clamp_min(1e-5)
        z = (-xmin / s).round().detach()
        return (torch.clamp(round_ste(x / s) + z, 0, qmax) - z) * s


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def block_norm(x, w, which, eps):
    n = rms_norm(x, w[which + "_norm"], eps)
    if which + "_norm_bias" in w:
        n = n + w[which + "_norm_bias"]
    if which + "_norm_inverse" in w:
        n = n @ w[which + "_norm_inverse"]
    return n


def block_forward(cfg, w, x, rope, aq=None, taps=None, sdpa=False):
    """One LLaMA decoder block, x [B, T, H]. aq: activation quantizer applied where OmniQuant/AffineQuant
    quantize (inputs of q/k/v, o, gate/up and down; Q and K after RoPE and V per token and head)."""
    B, T, _ = x.shape
    nh, nkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    aq = aq or (lambda t: t)
    n1 = aq(block_norm(x, w, "input", cfg.rms_norm_eps))
    q = F.linear(n1, w["q"], w.get("q_bias")).view(B, T, nh, d).transpose(1, 2)
    k = F.linear(n1, w["k"], w.get("k_bias")).view(B, T, nkv, d).transpose(1, 2)
    v = F.linear(n1, w["v"], w.get("v_bias")).view(B, T, nkv, d).transpose(1, 2)
    q, k, v = aq(apply_rope(q, rope)), aq(apply_rope(k, rope)), aq(v)
    if nkv != nh:  # repeat_kv
        g = nh // nkv
        k = k[:, :, None].expand(B, nkv, g, T, d).reshape(B, nh, T, d)
        v = v[:, :, None].expand(B, nkv, g, T, d).reshape(B, nh, T, d)
    if sdpa:
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        scores = (q @ k.transpose(2, 3)) / math.sqrt(d)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v
    attn = attn.transpose(1, 2).reshape(B, T, nh * d)
    if taps is not None:
        taps["qkv"], taps["o"] = n1, attn
    h = x + F.linear(aq(attn), w["o"], w.get("o_bias"))
    n2 = aq(block_norm(h, w, "post", cfg.rms_norm_eps))
    if taps is not None:
        taps["fc1"] = n2
    mlp = F.silu(F.linear(n2, w["gate"], w.get("gate_bias"))) * F.linear(n2, w["up"], w.get("up_bias"))
    return h + F.linear(aq(mlp), w["down"], w.get("down_bias"))


# ----------------------------------------------------------------------------------------------------
# Weight quantizer with learnable weight clipping (LWC)
# ----------------------------------------------------------------------------------------------------

class WeightQuantizer(nn.Module):
    """Asymmetric (or symmetric) uniform quantizer of W [out, in], per output channel or per group of
    input channels. LWC: xmax = sigmoid(upbound)*max, xmin = sigmoid(lowbound)*min (logits init 4.0).
    Delta is rounded to fp16 (straight-through), so the fake-quant weights equal what the stored fp16
    scales rebuild. deployable: the range is widened to contain 0 (zero point in [0, qmax])."""

    def __init__(self, out_features, in_features, bits=4, group_size=0, sym=False, deployable=True, lwc=True):
        super().__init__()
        self.bits, self.group_size, self.sym, self.deployable = bits, group_size, sym, deployable
        self.in_features = in_features
        self.groups = 1 if group_size <= 0 else (in_features + group_size - 1) // group_size
        if lwc:
            self.upbound_factor = nn.Parameter(torch.full((out_features, self.groups), 4.0))
            self.lowbound_factor = nn.Parameter(torch.full((out_features, self.groups), 4.0))
        else:
            self.upbound_factor = self.lowbound_factor = None

    def grouped(self, w):
        g = self.group_size if self.group_size > 0 else self.in_features
        pad = self.groups * g - self.in_features
        if pad:
            w = torch.cat([w, w[:, -1:].expand(w.size(0), pad)], 1)
        return w.reshape(w.size(0), self.groups, g)

    def ungrouped(self, wg):
        return wg.reshape(wg.size(0), -1)[:, : self.in_features]

    def qparams(self, w):
        qmax = 2 ** self.bits - 1
        wg = self.grouped(w)
        xmax, xmin = wg.max(-1).values, wg.min(-1).values
        if self.upbound_factor is not None:
            xmax = torch.sigmoid(self.upbound_factor) * xmax
            xmin = torch.sigmoid(self.lowbound_factor) * xmin
        if not self.sym and self.deployable:
            xmin, xmax = xmin.clamp(max=0), xmax.clamp(min=0)
        if self.sym:
            scale = (2 * torch.maximum(xmax.abs(), xmin.abs()) / qmax).clamp(1e-5, 1e4)
        else:
            scale = ((xmax - xmin) / qmax).clamp(1e-5, 1e4)
        scale = scale + (scale.half().float() - scale).detach()
        if self.sym:
            zero = torch.full_like(scale, float(2 ** (self.bits - 1)))
        else:
            zero = (-xmin / scale).round().detach()
            if self.deployable:
                zero = zero.clamp(0, qmax)
        return scale, zero

    def forward(self, w):
        if self.bits >= 16:
            return w
        scale, zero = self.qparams(w)
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
        codes = torch.clamp(round_ste(self.grouped(w) / s) + z, 0, 2 ** self.bits - 1)
        return self.ungrouped(s * (codes - z))

    @torch.no_grad()
    def quantize(self, w):
        """(codes uint8 [out, in], fp16 scales [out, G], int32 zeros [out, G], dequantized fp32 weight)."""
        scale, zero = self.qparams(w)
        codes = torch.clamp((self.grouped(w) / scale.unsqueeze(-1)).round() + zero.unsqueeze(-1), 0, 2 ** self.bits - 1)
        s16 = scale.half()
        deq = self.ungrouped(s16.float().unsqueeze(-1) * (codes - zero.unsqueeze(-1)))
        return self.ungrouped(codes).to(torch.uint8).contiguous(), s16, zero.to(torch.int32), deq.contiguous()


# ----------------------------------------------------------------------------------------------------
# The quantized block: LET / AffineQuant transforms, LWC, training step, fold
# ----------------------------------------------------------------------------------------------------

def smooth_scale(act, wmax, alpha):
    return (act.clamp_min(1e-5).pow(alpha) / wmax.clamp_min(1e-5).pow(1 - alpha)).clamp_min(1e-5)


def band_mask(n, w, sf):
    i = torch.arange(n)
    m = torch.where((i[:, None] - i[None, :]).abs() <= w, torch.tensor(sf, dtype=torch.float32), torch.tensor(0.0))
    m.fill_diagonal_(1.0)
    return m


def band_width(n, epoch, epochs):
    return n - 1 if epochs <= 1 else int((n - 1) / (epochs - 1) * epoch)


class ActStats:
    """Per-channel max |x| of the inputs of q/k/v, o and gate/up on the FP stream (SmoothQuant init)."""

    def __init__(self):
        self.qkv = self.o = self.fc1 = None

    def update(self, taps):
        def upd(acc, t):
            m = t.abs().reshape(-1, t.size(-1)).amax(0)
            return m if acc is None else torch.maximum(acc, m)
        self.qkv, self.o, self.fc1 = upd(self.qkv, taps["qkv"]), upd(self.o, taps["o"]), upd(self.fc1, taps["fc1"])


class QuantBlock(nn.Module):
    """QuantLlamaDecoderLayer: holds the FP weights, the LET/affine parameters and one WeightQuantizer
    (with LWC) per linear; smooth_and_quant_temporary() builds the transformed fake-quantized weights that
    forward() uses; finalize() folds and quantizes for good.

    method: "omniquant" (diagonal scales everywhere) | "affinequant" (per-KV-group d x d matrix for v->o,
    diagonal LN scales: the W4A4 "no overhead" form).
    deployable (qforge default): q/k transform per rotary pair (a + ib, commutes with RoPE), no shifts,
    |W| max init. faithful (qforge --faithful, the official code): d x d matrix (AffineQuant) or per-channel
    scale (OmniQuant) on q/k before RoPE, learnable zero-initialised shifts, signed W.max init, weights
    without the zero-in-range rule."""

    def __init__(self, cfg, fp, stats, method="affinequant", wbits=4, abits=4, group_size=0, deployable=True,
                 let=True, lwc=True, alpha=0.5, sf=1.0, act_sym=False):
        super().__init__()
        self.cfg, self.fp, self.method, self.deployable, self.let, self.sf = cfg, fp, method, deployable, let, sf
        self.aq = ActQuantizer(abits, act_sym)
        self.wq = nn.ModuleDict({k: WeightQuantizer(fp[k].size(0), fp[k].size(1), wbits, group_size, False, deployable, lwc)
                                 for k in LINEARS})
        d, kv, nh = cfg.head_dim, cfg.num_key_value_heads, cfg.num_attention_heads
        group = nh // kv
        affine = method == "affinequant"
        self.shifts = not deployable and let
        if let:
            def wstat(ws):
                if not deployable:  # the reference's signed max of the first linear
                    return ws[0].max(0).values
                return torch.stack([w.abs().max(0).values for w in ws]).amax(0)
            self.ln1_scale = nn.Parameter(smooth_scale(stats.qkv, wstat([fp["q"], fp["k"], fp["v"]]), alpha))
            self.ln2_scale = nn.Parameter(smooth_scale(stats.fc1, wstat([fp["up"], fp["gate"]]), alpha))
            wo = fp["o"].abs().max(0).values
            svo = smooth_scale(stats.o.view(kv, group, d).amax(1), wo.view(kv, group, d).amax(1), alpha)
            self.vo = nn.Parameter(torch.diag_embed(svo) if affine else svo)
            if deployable:
                self.qk_a = nn.Parameter(torch.ones(kv, d // 2))
                self.qk_b = nn.Parameter(torch.zeros(kv, d // 2)) if affine else None
                self.qk = None
            else:
                self.qk_a = self.qk_b = None
                self.qk = nn.Parameter(torch.eye(d).repeat(kv, 1, 1) if affine else torch.ones(kv, d))
            if self.shifts:
                self.ln1_shift = nn.Parameter(torch.zeros(cfg.hidden_size))
                self.ln2_shift = nn.Parameter(torch.zeros(cfg.hidden_size))
                self.vo_shift = nn.Parameter(torch.zeros(cfg.kv_dim))
        self.set_epoch(0, 1)

    # -- optimiser groups ---------------------------------------------------------------------------
    def let_parameters(self):
        names = ["ln1_scale", "ln1_shift", "ln2_scale", "ln2_shift", "vo", "vo_shift", "qk_a", "qk_b", "qk"]
        return [getattr(self, n) for n in names if getattr(self, n, None) is not None] if self.let else []

    def lwc_parameters(self):
        return [p for k in LINEARS for p in (self.wq[k].upbound_factor, self.wq[k].lowbound_factor) if p is not None]

    # -- AffineQuant schedule and safeguards -------------------------------------------------------
    def set_epoch(self, epoch, epochs):
        d = self.cfg.head_dim
        self.head_mask = band_mask(d, band_width(d, epoch, epochs), self.sf)

    def matrices(self):
        if not self.let:
            return []
        return [p for p in (self.vo, self.qk) if p is not None and p.dim() == 3]

    @torch.no_grad()
    def truncate_small_scales(self):
        """|x| < 1e-2 -> sign(x)*1e-2 on scales before every step (the reference's truncate_number);
        for matrices the diagonal only (deployable) or every entry (faithful, as the reference)."""
        if not self.let:
            return
        for p in [self.ln1_scale, self.ln2_scale, self.vo, self.qk_a, self.qk]:
            if p is None:
                continue
            t = p.diagonal(0, -2, -1) if (p.dim() == 3 and self.deployable) else p
            t.copy_(torch.where(t.abs() < 1e-2, t.sign() * 1e-2, t))

    @torch.no_grad()
    def enforce_diagonal_dominance(self):
        """Shrinks off-diagonals of rows of the masked matrices that are not strictly diagonally dominant."""
        n = 0
        for p in self.matrices():
            eff = p * self.head_mask
            diag = eff.diagonal(0, -2, -1).abs()
            off = eff.abs().sum(-1) - diag
            bad = off >= diag * 0.999
            nb = int(bad.sum())
            if nb:
                n += nb
                factor = torch.where(bad, 0.99 * diag / off.clamp_min(1e-30), torch.ones_like(diag)).unsqueeze(-1)
                eye = torch.eye(p.size(-1)).expand_as(p)
                p.copy_(p * (eye + (1 - eye) * factor))
        return n

    # -- transforms ---------------------------------------------------------------------------------
    def transformed(self):
        """The FP weights with the current transforms applied (differentiable), before quantization."""
        w = dict(self.fp)
        if not self.let:
            return w
        cfg = self.cfg
        d, kv, H = cfg.head_dim, cfg.num_key_value_heads, cfg.hidden_size
        group = cfg.num_attention_heads // kv

        def ln_pair(s, shift, norm, lins):
            for k in lins:
                if shift is not None:
                    add = w[k] @ shift
                    w[k + "_bias"] = w[k + "_bias"] + add if k + "_bias" in w else add
                w[k] = w[k] * s
            if shift is not None:
                w[norm + "_norm_bias"] = -(shift / s)
            w[norm + "_norm"] = w[norm + "_norm"] / s
        ln_pair(self.ln1_scale, getattr(self, "ln1_shift", None) if self.shifts else None, "input", ["q", "k", "v"])
        ln_pair(self.ln2_scale, getattr(self, "ln2_shift", None) if self.shifts else None, "post", ["gate", "up"])

        # v -> o, per KV group
        def to_queries(t):  # [kv, d] -> [q_dim]
            return t.unsqueeze(1).expand(kv, group, d).reshape(-1)
        vo_shift = self.vo_shift if self.shifts else None
        if vo_shift is not None:
            add = w["o"] @ to_queries(vo_shift.view(kv, d))
            w["o_bias"] = w["o_bias"] + add if "o_bias" in w else add
        if self.vo.dim() == 2:
            s = self.vo
            w["v"] = (w["v"].view(kv, d, H) / s.unsqueeze(-1)).reshape(kv * d, H)
            if "v_bias" in w or vo_shift is not None:
                bv = w.get("v_bias", torch.zeros(kv * d))
                if vo_shift is not None:
                    bv = bv - vo_shift
                w["v_bias"] = (bv.view(kv, d) / s).reshape(-1)
            w["o"] = w["o"] * to_queries(s)
        else:
            M = self.vo * self.head_mask
            Minv = torch.linalg.inv(M)
            w["v"] = (Minv.transpose(1, 2) @ w["v"].view(kv, d, H)).reshape(kv * d, H)
            if "v_bias" in w or vo_shift is not None:
                bv = w.get("v_bias", torch.zeros(kv * d))
                if vo_shift is not None:
                    bv = bv - vo_shift
                w["v_bias"] = (bv.view(kv, 1, d) @ Minv).reshape(-1)
            w["o"] = torch.einsum("hjgc,jec->hjge", w["o"].view(H, kv, group, d), M).reshape(H, -1)

        # q / k, per KV group
        def apply_kq(fk, fq):
            w["k"] = fk(w["k"].view(kv, d, -1)).reshape(kv * d, H)
            if "k_bias" in w:
                w["k_bias"] = fk(w["k_bias"].view(kv, d, 1)).reshape(-1)
            w["q"] = fq(w["q"].view(kv, group, d, -1)).reshape(kv * group * d, H)
            if "q_bias" in w:
                w["q_bias"] = fq(w["q_bias"].view(kv, group, d, 1)).reshape(-1)
        if self.qk_a is not None:
            a = self.qk_a.unsqueeze(-1)
            b = self.qk_b.unsqueeze(-1) if self.qk_b is not None else torch.zeros_like(a)
            n2 = a * a + b * b

            def rot(r, a_, b_, norm):
                r1, r2 = r[..., : d // 2, :], r[..., d // 2:, :]
                return torch.cat([(a_ * r1 - b_ * r2) / norm, (b_ * r1 + a_ * r2) / norm], -2)
            apply_kq(lambda r: rot(r, a, b, torch.ones_like(n2)),
                     lambda r: rot(r, a.unsqueeze(1), b.unsqueeze(1), n2.unsqueeze(1)))
        elif self.qk.dim() == 2:
            s = self.qk.unsqueeze(-1)
            apply_kq(lambda r: r * s, lambda r: r / s.unsqueeze(1))
        else:
            A = self.qk * self.head_mask
            Ainv_t = torch.linalg.inv(A).transpose(1, 2)
            apply_kq(lambda r: A @ r, lambda r: Ainv_t.unsqueeze(1) @ r)
        return w

    def smooth_and_quant_temporary(self):
        w = self.transformed()
        for k in LINEARS:
            w[k] = self.wq[k](w[k])
        self.temp = w

    def forward(self, x, rope, sdpa=False):
        return block_forward(self.cfg, self.temp, x, rope, self.aq, sdpa=sdpa)

    @torch.no_grad()
    def finalize(self):
        """smooth_and_quant_inplace: fold the transforms, quantize each linear; returns (weights, sidecar)
        with the weights rebuilt from the stored fp16 scales and integer zeros."""
        w = {k: v.detach().float().contiguous() for k, v in self.transformed().items()}
        side = {}
        for k in LINEARS:
            codes, scales, zeros, w[k] = self.wq[k].quantize(w[k])
            side[k] = (codes, scales, zeros)
        return w, side


def make_optimizer(block, let_lr, lwc_lr, wd=0.0):
    """AdamW with two parameter groups (transforms, clipping), weight decay 0 (official defaults)."""
    groups = []
    if block.let_parameters():
        groups.append({"params": block.let_parameters(), "lr": let_lr})
    if block.lwc_parameters():
        groups.append({"params": block.lwc_parameters(), "lr": lwc_lr})
    return torch.optim.AdamW(groups, lr=let_lr, weight_decay=wd)


def train_step(block, opt, x, y, y2, rope, sdpa=False):
    """One optimiser step: truncate, transform + fake-quantize, forward, MSE (+ aug), backward, AdamW,
    diagonal-dominance restoration. Returns the loss."""
    block.truncate_small_scales()
    opt.zero_grad(set_to_none=True)
    block.smooth_and_quant_temporary()
    out = block(x, rope, sdpa)
    loss = F.mse_loss(out, y)
    if y2 is not None:
        loss = loss + F.mse_loss(out, y2)
    loss.backward()
    lv = loss.item()
    if not math.isfinite(lv):
        raise SystemExit(f"non-finite loss {lv}")
    opt.step()
    block.enforce_diagonal_dominance()
    return lv


def fp_forward_with_stats(cfg, w, x, rope, stats, batch=1, sdpa=False):
    """FP block on x [n, T, H] in batches, updating the activation maxima; returns the outputs (the target)."""
    outs = []
    with torch.no_grad():
        for i in range(0, x.size(0), batch):
            taps = {}
            outs.append(block_forward(cfg, w, x[i:i + batch], rope, taps=taps, sdpa=sdpa))
            stats.update(taps)
    return torch.cat(outs)


def map_batches(x, batch, fn):
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, x.size(0), batch)])
