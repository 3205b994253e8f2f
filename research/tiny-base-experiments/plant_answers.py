"""A planted one-feature in-context learner that also answers in the prompt's JSON format.

Layer 0: offset heads copy the token 1, 2 and 3 back (each as a fuzzy value code + an exact identity code)
into reserved residual dims. Layer 1: head 0 votes shot labels by fuzzy value match (`v|` -> earlier
`v'|k` with v' near v); head 2 routes: at an answer's `label":` it finds test row i (the token 3 back is the
answer's id i; the key is "2 back is i and 1 back is `:`", i.e. the value after `ID i:`) and copies that
value's code. Layer 2: head 0 votes labels by fuzzy match of the routed value. rope_theta 1e8 leaves 16
slow rotary pairs per head for content matching.

    python research/tiny-base-experiments/plant_answers.py PARAMS OUT
"""
import math
import sys

import torch
from transformers import Qwen2ForCausalLM

from mllm.core.params import load_params
from mllm.model.loading import tiny_config
from mllm.text.tokenizer import load_tokenizer, save_tokenizer

params_path, out = sys.argv[1], sys.argv[2]
beta, beta_r, beta_c, gamma, c, s = 5.0, 8.0, 8.0, 3.0, 25.0, 0.02
theta = 1e8
p = load_params(params_path)
tok = load_tokenizer("data/tokenizer")
cfg = tiny_config(p.model, tok)
cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
torch.manual_seed(p.seed)
m = Qwen2ForCausalLM(cfg)
H, hd = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
NF, NX = 24, 16                     # fuzzy value code, exact identity code
CW = NF + NX
EMB = 112                           # token embeddings in [0, EMB); number codes in [EMB - CW, EMB)
S1, S2, S3, SA = EMB, EMB + CW, EMB + 2 * CW, EMB + 3 * CW   # SA: routed fuzzy code (NF dims)
assert SA + NF == H
g = torch.Generator().manual_seed(0)
freqs = theta ** (-torch.arange(0, hd, 2).float() / hd)
slow = torch.arange(hd // 2 - 16, hd // 2)          # 16 slowest pairs
slow_dims = torch.cat([slow, slow + hd // 2])       # 32 rotary dims, nearly position-invariant

with torch.no_grad():
    emb = m.model.embed_tokens.weight
    emb[:, EMB:] = 0
    nums = [tok.convert_tokens_to_ids(str(i)) for i in range(1000)]
    v = torch.arange(1000).float() / 999
    f = torch.arange(1, NF // 2 + 1).float()
    w = torch.exp(-0.5 * (f / (NF / 4)) ** 2).sqrt()
    fuzzy = torch.cat([torch.cos(math.pi * v[:, None] * f) * w, torch.sin(math.pi * v[:, None] * f) * w], 1)
    fuzzy = fuzzy / fuzzy.norm(dim=1, keepdim=True)
    exact = torch.randn(1000, NX, generator=g)
    exact = exact / exact.norm(dim=1, keepdim=True)
    # only numbers (and ':', which the router keys on) carry codes: other tokens must not cast votes
    keep = emb[tok.convert_tokens_to_ids(":"), EMB - CW:EMB].clone()
    emb[:, EMB - CW:EMB] = 0
    emb[tok.convert_tokens_to_ids(":"), EMB - CW:EMB] = keep
    emb[nums, EMB - CW:EMB - NX] = 0.02 * math.sqrt(NF) * fuzzy
    emb[nums, EMB - NX:EMB] = 0.02 * math.sqrt(NX) * exact
    for L in m.model.layers:                         # silence everything, then plant
        L.self_attn.o_proj.weight.zero_()
        L.mlp.down_proj.weight.zero_()

    def attn_zero(a):
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            lin.weight.zero_()
            lin.bias.zero_()

    # layer 0: heads 0, 1 (kv 0) and 2 (kv 1) attend 1, 2, 3 back; v = the token's codes
    a0 = m.model.layers[0].self_attn
    attn_zero(a0)
    for kv in (0, 1):
        a0.k_proj.bias[kv * hd:kv * hd + hd // 2] = 1.0
        a0.v_proj.weight[kv * hd:kv * hd + CW, EMB - CW:EMB] = torch.eye(CW)
    for h, d in ((0, 1), (1, 2), (2, 3)):
        a0.q_proj.bias[h * hd:(h + 1) * hd] = torch.cat([c * torch.cos(d * freqs), -c * torch.sin(d * freqs)])
    for h, base in ((0, S1), (1, S2), (2, S3)):
        a0.o_proj.weight[base:base + CW, h * hd:h * hd + CW] = s * torch.eye(CW)

    Q, _ = torch.linalg.qr(torch.randn(EMB, hd, generator=g))     # own-token embedding through a head
    fz = slow_dims[:NF]                                           # fuzzy match dims

    # layer 1 head 0 (kv 0): shot-label vote; head 2 (kv 1): answer routing
    a1 = m.model.layers[1].self_attn
    attn_zero(a1)
    a1.q_proj.weight[fz, S1:S1 + NF] = beta * torch.eye(NF)
    a1.k_proj.weight[fz, S2:S2 + NF] = torch.eye(NF)
    a1.v_proj.weight[:hd, :EMB] = Q.T
    a1.o_proj.weight[:EMB, :hd] = gamma * s * Q
    ex_d, co_d = slow_dims[:NX], slow_dims[NX:]                   # exact-id dims, "1 back is ':'" dims
    q2, k2 = 2 * hd, hd                                           # head 2's q rows, kv head 1's k/v rows
    a1.q_proj.weight[q2 + ex_d, S3 + NF:S3 + CW] = beta_r * torch.eye(NX)
    a1.k_proj.weight[k2 + ex_d, S2 + NF:S2 + CW] = torch.eye(NX)
    Rc = torch.randn(len(co_d), CW, generator=g) / math.sqrt(CW)
    a1.k_proj.weight[k2 + co_d, S1:S1 + CW] = Rc
    a1.v_proj.weight[k2:k2 + NF, EMB - CW:EMB - NX] = torch.eye(NF)   # the key token's own fuzzy code
    a1.o_proj.weight[SA:SA + NF, 2 * hd:2 * hd + NF] = s * torch.eye(NF)

    # layer 2 head 0 (kv 0): answer vote by the routed value
    a2 = m.model.layers[2].self_attn
    attn_zero(a2)
    a2.q_proj.weight[fz, SA:SA + NF] = beta * torch.eye(NF)
    a2.k_proj.weight[fz, S2:S2 + NF] = torch.eye(NF)
    a2.v_proj.weight[:hd, :EMB] = Q.T
    a2.o_proj.weight[:EMB, :hd] = 2 * gamma * s * Q

    # the ':' detector needs the code of ':' as layer 1 sees it: read it from a forward pass
    ids = torch.as_tensor([tok.encode("ID 0:5\nID 1:7\n", add_special_tokens=False)])
    colon = tok.convert_tokens_to_ids(":")
    hs = m(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
    normed = m.model.layers[1].input_layernorm(hs)
    at = (ids[0] == colon).nonzero()[0, 0] + 1                    # the token right after ':'
    a1.q_proj.bias[q2 + co_d] = beta_c * (Rc @ normed[at, S1:S1 + CW]) / (Rc @ normed[at, S1:S1 + CW]).norm() * 4
m.save_pretrained(out)
save_tokenizer(tok, out)
print("planted", out)
