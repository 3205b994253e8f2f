"""A tiny Qwen2 whose weights implement an induction (recall) circuit for `A|B ... A|?`:
layer 0 heads read the token 1 and 2 back (q/k biases + RoPE phase) into reserved residual dims; layer 1 head
matches "token 1 back" at the query against "token 2 back" at earlier positions in near-position-invariant
(low-frequency) rotary pairs and copies the matched position's own token. Everything else silenced.

    python research/tiny-base-experiments/plant.py PARAMS OUT ROPE_THETA BETA GAMMA C [VALUE_CODE]
    (recall: 1e6 5 3 25; fuzzy: 1e6 BETA 3 25 1)

VALUE_CODE=1 makes the match fuzzy: the number tokens 0..999 carry a smooth Fourier code of their value and
the heads compare those codes, so `v|` attends to shots with nearby values (a one-feature kernel vote).
"""
import math
import sys

import torch
from transformers import Qwen2ForCausalLM

from mllm.core.params import load_params
from mllm.model.loading import tiny_config
from mllm.text.tokenizer import load_tokenizer, save_tokenizer

params_path, out = sys.argv[1], sys.argv[2]
theta, beta, gamma, c = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
value_code = len(sys.argv) > 7 and sys.argv[7] == "1"
p = load_params(params_path); tok = load_tokenizer("data/tokenizer")
cfg = tiny_config(p.model, tok)
cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
torch.manual_seed(p.seed)
m = Qwen2ForCausalLM(cfg)
H, hd = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
C = 32                      # reserved dims per code
E0 = H - 2 * C              # token embeddings live in dims [0, E0)
g = torch.Generator().manual_seed(0)
freqs = theta ** (-torch.arange(0, hd, 2).float() / hd)
with torch.no_grad():
    emb = m.model.embed_tokens.weight
    emb[:, E0:] = 0
    for L in m.model.layers:          # silence everything, then plant
        L.self_attn.o_proj.weight.zero_(); L.mlp.down_proj.weight.zero_()
    a0 = m.model.layers[0].self_attn
    # heads 0, 1 (kv head 0): offsets 1 and 2, position-only scores
    a0.k_proj.weight[:hd] = 0; kb = torch.zeros(hd); kb[: hd // 2] = 1.0; a0.k_proj.bias[:hd] = kb
    for h, d in enumerate((1, 2)):
        a0.q_proj.weight[h * hd:(h + 1) * hd] = 0
        a0.q_proj.bias[h * hd:(h + 1) * hd] = torch.cat([c * torch.cos(d * freqs), -c * torch.sin(d * freqs)])
    P = torch.randn(C, E0, generator=g) / math.sqrt(E0)
    if value_code:  # 12 frequencies, Gaussian taper: a kernel about 40 values wide on 0..999
        nf = 12
        v = torch.arange(1000).float() / 999
        f = torch.arange(1, nf + 1).float()
        w = torch.exp(-0.5 * (f / (nf / 2)) ** 2).sqrt()
        code = torch.cat([torch.cos(math.pi * v[:, None] * f) * w, torch.sin(math.pi * v[:, None] * f) * w], 1)
        code = code / code.norm(dim=1, keepdim=True)
        ids = [tok.convert_tokens_to_ids(str(i)) for i in range(1000)]
        emb[ids, E0 - 2 * nf:E0] = 0.02 * math.sqrt(2 * nf) * code
        P = torch.zeros(C, E0)
        P[: 2 * nf, E0 - 2 * nf:E0] = torch.eye(2 * nf)
    a0.v_proj.weight[:hd] = 0; a0.v_proj.weight[:C, :E0] = P; a0.v_proj.bias[:hd] = 0
    s = 0.02
    a0.o_proj.weight[E0:E0 + C, 0:C] = s * torch.eye(C)                # head 0 -> code of token 1 back
    a0.o_proj.weight[E0 + C:H, hd:hd + C] = s * torch.eye(C)           # head 1 -> code of token 2 back
    # layer 1 head 0 (kv head 0): content match in the slowest rotary pairs
    a1 = m.model.layers[1].self_attn
    slow = torch.arange(hd // 2 - 12, hd // 2)
    dims = torch.cat([slow, slow + hd // 2])                           # 24 rotary dims
    R = torch.randn(len(dims), C, generator=g) / math.sqrt(C)
    if value_code:
        R = torch.zeros(len(dims), C)
        R[:, : len(dims)] = torch.eye(len(dims))
    a1.q_proj.weight[:hd] = 0; a1.q_proj.bias[:hd] = 0
    a1.k_proj.weight[:hd] = 0; a1.k_proj.bias[:hd] = 0
    a1.q_proj.weight[dims, E0:E0 + C] = beta * R
    a1.k_proj.weight[dims, E0 + C:H] = R
    Q, _ = torch.linalg.qr(torch.randn(E0, hd, generator=g))          # E0 x hd, orthonormal columns
    a1.v_proj.weight[:hd] = 0; a1.v_proj.bias[:hd] = 0
    a1.v_proj.weight[:hd, :E0] = Q.T
    a1.o_proj.weight[:E0, :hd] = gamma * s * Q                          # the matched token's embedding, back
m.save_pretrained(out); save_tokenizer(tok, out)
print("planted", out)
