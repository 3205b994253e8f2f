"""Scratch tiny model whose layer-0 heads attend to fixed offsets (q/k biases + RoPE phase): previous-token
style heads that induction circuits need. offsets: comma list, one per query head of layer 0.

    python research/tiny-base-experiments/posinit.py PARAMS OUT 1,2 25
"""
import math
import sys

import torch

from mllm.core.params import load_params
from mllm.model.loading import load_base
from mllm.text.tokenizer import load_tokenizer, save_tokenizer

params_path, out, offsets, c = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], float(sys.argv[4])
p = load_params(params_path)
tok = load_tokenizer("data/tokenizer")
model = load_base(p.model, tok, p.seed)
cfg = model.config
hd = cfg.hidden_size // cfg.num_attention_heads
theta = cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters") else cfg.rope_theta
freqs = theta ** (-torch.arange(0, hd, 2).float() / hd)   # (hd/2,)
att = model.model.layers[0].self_attn
group = cfg.num_attention_heads // cfg.num_key_value_heads
with torch.no_grad():
    for h, d in enumerate(offsets):
        kv = h // group
        att.k_proj.weight[kv * hd:(kv + 1) * hd] = 0
        kb = torch.zeros(hd); kb[: hd // 2] = 1.0
        att.k_proj.bias[kv * hd:(kv + 1) * hd] = kb
        att.q_proj.weight[h * hd:(h + 1) * hd] = 0
        qb = torch.cat([c * torch.cos(d * freqs), -c * torch.sin(d * freqs)])
        att.q_proj.bias[h * hd:(h + 1) * hd] = qb
model.save_pretrained(out)
save_tokenizer(tok, out)
# check: attention of the last position over offsets
q = att.q_proj.bias.view(-1, hd)[: len(offsets)]
k = att.k_proj.bias.view(-1, hd)[0]
for h, d in enumerate(offsets):
    s = []
    for delta in range(8):
        ang = delta * freqs
        qa, qb_ = q[h, : hd // 2], q[h, hd // 2:]
        s.append(float((qa * torch.cos(ang) - qb_ * torch.sin(ang)) @ k[: hd // 2]) / math.sqrt(hd))
    print("head", h, "offset", d, "scores by delta 0..7:", [round(x, 1) for x in s])
