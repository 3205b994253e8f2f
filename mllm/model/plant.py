"""The embedded base, compiled: a kernel-vote in-context classifier written into the weights of a Qwen2 LM.

Training from scratch on this CPU never found the lookup that in-context classification needs (the model
learns the shots' class frequencies and stops; research/README.md). So the base is compiled: its
attention heads compute, in the forward pass, a kernel smoother over the prompt's shot rows, for any number
of features up to 48, in the exact prompt format of ``mllm.text.prompt``; continued pretraining (LoRA by default)
then starts from a model that already classifies in context.

How (positions are tokens; numbers 0..999 are single tokens; a shot row is ``v1,..,vF|k`` + newline and a
test row ``ID i:v1,..,vF`` + newline, so in both a row's values sit at odd offsets 1..2F-1 before its end):

- every number token carries a smooth Fourier code c(v) of its value in half turns (nearby values, similar
  codes; with one frequency <c(u), c(v)> = cos(pi (u - v) / 1998), a wide kernel, monotone over the whole
  range, never negative);
- layers 2-7 build at each value a row summary S = sum_m P^m E c(v_m), slot m = the m-th value back within
  the row: E puts a code in the summary's first 2 nfreq dims and P shifts by 2 nfreq dims, so slot m has
  dims of its own (D / (2 nfreq) = 48 slots at one frequency) and two rows compare column by column,
  without crosstalk and without knowing F. Layer 1+k adds P^(2^(k-1)) times the partial summary 2^k tokens
  back, unless the row started inside the current window, in which case it attends to a sink
  (``<|im_start|>``) instead (six doublings reach 64 values back; values past the 48th alias onto the
  first slots);
- layer 8 copies the summary to ``|`` (the row to classify) and to the shot's label token (the key; every
  other token keys nothing);
- layer 9, where an answer's label comes next (after ``"label": ``), finds test row i (a test row carries the id read after ``ID i:``)
  and copies its summary there;
- layers 10-11 weigh the columns (in-context feature relevance): at each shot's label token, the
  column means of the shots of its class so far minus those of all shots so far (in one centred coordinate
  per slot), squared by layer 10's MLP, is that shot's between-class spread per column; where an answer's
  label comes next, layer 11 averages it over the shots (the first ones, whose class means are noisy, damped)
  into r_c, the column's between-class share of variance, and its MLP weighs the row's summary slot by slot,
  w_c = silu(gain (r_c + offset)): columns that go with the label count more, distractors less;
- layer 12 votes: softmax(tau <W S_row, S_shot>) over the shots' label tokens, which adds their label
  embeddings to the residual: a kernel-weighted vote, i.e. a soft nearest-neighbour classifier under a
  metric learned from the shots.

Everything else starts silenced (zero output projections), so the gradient of continued pretraining sees
a working classifier. Positions use rotary pairs: the fast pairs give offset heads (q/k biases with the
rotary phase of the wanted offset); rope_theta 1e30 leaves the slowest 49 pairs position-invariant over the
16,384-token context, for content matching, sinks and flags. Every code and flag is 0.01 in a residual whose constant dimension is 1, so each
layer's RMS norm is a near-constant scale and the arithmetic stays linear (the relevance quantities sit
lower still, A_D and A2: they are present at every shot label, whose norm scales the vote's keys).
"""

from __future__ import annotations

import math

from mllm.core.params import MAX_LABELS, PlantParams
from mllm.text.prompt import answer_piece

PLANT_RECORD = "plant.json"  # beside the weights: the settings and the weights' sha256
HIDDEN, HEAD_DIM, HEADS, LAYERS, INTERMEDIATE, MAX_POSITIONS = 768, 128, 2, 13, 128, 16384
ROPE_THETA = 1e30
N_FAST = 10                       # rotary pairs for offsets (no far offset aliases a near one within 32k tokens)
N_STILL = 15                      # pairs 15.. turn < 0.002 rad over MAX_POSITIONS: content, sinks and flags
A = 0.01                          # size of a code or a flag in the residual (the constant dimension is 1)
C_POS = 25.0                      # offset score per fast pair: the target scores 10 x C_POS
GATE = 12.0                       # softmax margin of every either/or head (nats)

# residual layout
TOK = slice(0, 64)                # token identity (random, small; the labels' orthogonal, of one length)
CONST, SINK, COMMA, COLON, NEWL, BAR, NUM, DIGIT = range(64, 72)   # DIGIT: the label tokens 0..MAX_LABELS-1
NX, D = 16, 96                    # exact-identity code dims; summary dims
EX = slice(96, 112)               # exact identity of a number
PREV, PCOMMA, PCOLON, PBAR = slice(112, 128), 128, 129, 130
IDB = slice(131, 147)             # exact code of the answer's id, read where its label comes next
ROWID = slice(147, 163)           # a test row's id, carried along the row
B = list(range(163, 170))         # b[k]: the row started within the last 2^k slots
S = slice(170, 170 + D)           # row summary (partial, growing with the doublings)
S1 = slice(S.stop, S.stop + D)    # the summary of the row to classify
ROWID1 = slice(S1.stop, S1.stop + NX)
KS = slice(ROWID1.stop, ROWID1.stop + D)   # the summary of the row a shot label ends
INV = KS.stop                              # 2 A / (shot labels so far + 2): the two sinks' share
DREL = slice(INV + 1, INV + 1 + D // 2)    # per slot: class mean - mean of the shots so far (x A_D); nfreq 1
RB = slice(DREL.stop, DREL.stop + D // 2)  # per slot: that squared, in column variances (x A2)
RQ = slice(RB.stop, RB.stop + D // 2)      # per slot: the shots' mean of RB, the column's relevance r (x A2)
S1W = slice(RQ.stop, RQ.stop + D)          # the summary of the row to classify, each slot weighted (x A2 / A)
assert S1W.stop <= HIDDEN
VOTE_LAYER = 12
# relevance quantities sit far below A: they are present at every shot label, whose norm scales the vote's keys
A_D, A2 = 1e-3, 1e-4
U_VAR = (math.pi * 120 / 1998) ** 2        # variance of U for a standardised column (std 120 codes)
LABEL_KEY = 40.0                           # score of a shot label in the uniform heads (others: <= half)
CLASS_MATCH = 25.0                         # nats between a shot of the same label and one of another
SQUARE_C = 20.0                            # silu's linear regime
NEUTRAL = 1.2784645                        # silu(NEUTRAL) = 1


def plant_config(tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS, rope_theta=ROPE_THETA, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def value_code(nfreq: int, sigma_f: float):
    """(1000, 2 nfreq) unit-norm Fourier codes of the values 0..999 in half turns: <code(u), code(v)> is a
    smooth kernel in |u - v| (one frequency: cos(pi |u - v| / 1998), from 1 down to 0 across the range)."""
    import torch

    v = torch.arange(1000, dtype=torch.float64) / 999 / 2
    f = torch.arange(1, nfreq + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (f / sigma_f) ** 2).sqrt()
    code = torch.cat([torch.cos(math.pi * v[:, None] * f) * w, torch.sin(math.pi * v[:, None] * f) * w], 1)
    return (code / code.norm(dim=1, keepdim=True)).float()


def answer_id_back(tokenizer) -> int:
    """How many tokens before the position that predicts an answer's label its id sits (5 for
    ``{"id": 7, "label": `` in the embedded tokenizer: ``7 , Ġ" label ": Ġ``)."""
    ids = tokenizer(answer_piece(7), add_special_tokens=False)["input_ids"]
    seven = tokenizer.convert_tokens_to_ids("7")
    if ids.count(seven) != 1:
        raise ValueError("the kernel-vote base needs the id of an answer item to be one token")
    return len(ids) - 1 - ids.index(seven)


def plant_base(tokenizer, settings: PlantParams):
    """A Qwen2ForCausalLM whose forward pass is the kernel-vote classifier described above."""
    import torch
    from transformers import Qwen2ForCausalLM

    for t in ("<|im_start|>", ",", ":", "Ċ", "|", "0", "999"):
        if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the kernel-vote base needs the embedded tokenizer (whole numbers); no token {t!r}")
    torch.manual_seed(settings.seed)
    model = Qwen2ForCausalLM(plant_config(tokenizer)).eval()
    g = torch.Generator().manual_seed(settings.seed)
    omega = ROPE_THETA ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    fast = torch.arange(N_FAST)
    still = torch.arange(N_STILL, HEAD_DIM // 2 - 1)
    sink_d, flag_d = HEAD_DIM // 2 - 1, HEAD_DIM - 1           # the stillest pair: one dim each
    content_d = torch.cat([still, still + HEAD_DIM // 2])
    assert len(content_d) >= D
    sc = math.sqrt(HEAD_DIM)                                   # undoes the attention's 1/sqrt(head_dim)
    peak = N_FAST * C_POS
    eye = torch.eye
    ids = tokenizer.convert_tokens_to_ids

    def head(layer: int, h: int):
        return model.model.layers[layer].self_attn, h * HEAD_DIM

    def offset(a, r: int, d: int) -> None:
        """Head r attends d tokens back: q bias = the rotary phase of d on the fast pairs; k = 1 there on
        every token but the sinks (whose score is their own)."""
        q = torch.zeros(HEAD_DIM, dtype=torch.float64)
        q[fast] = C_POS * torch.cos(d * omega[fast])
        q[fast + HEAD_DIM // 2] = -C_POS * torch.sin(d * omega[fast])
        a.q_proj.bias[r:r + HEAD_DIM] = (q * sc).float()
        a.k_proj.weight[r + fast, CONST] = 1.0
        a.k_proj.weight[r + fast, SINK] = -1.0 / A

    def sink_key(a, r: int) -> None:
        a.k_proj.weight[r + sink_d, SINK] = 1.0 / A

    def lift(norm, dims: slice, size: float) -> None:
        """The layer reads ``dims`` (stored at ``size``) at A, like every other code: its projections, and
        what training changes in them, see inputs of one scale."""
        norm.weight.fill_(1 / math.sqrt(HIDDEN))
        norm.weight[dims] = A / size / math.sqrt(HIDDEN)

    def label_key(a, r: int) -> None:
        """Head r scores LABEL_KEY on a shot's label token (after `|` and a label 0..MAX_LABELS-1) and half
        that on a token with one of the two (the header's `"|".`, a small feature value)."""
        a.q_proj.bias[r + flag_d] = LABEL_KEY / 2 * sc
        a.k_proj.weight[r + flag_d, PBAR] = 1.0 / A
        a.k_proj.weight[r + flag_d, DIGIT] = 1.0 / A

    def copy(a, r: int, src: slice, dst: slice, at: int = 0, matrix=None) -> None:
        n = src.stop - src.start
        a.v_proj.weight[r + at + torch.arange(n), src] = eye(n)
        a.o_proj.weight[dst, r + at:r + at + n] = eye(n) if matrix is None else matrix

    with torch.no_grad():
        for layer in model.model.layers:      # silence everything; each norm becomes x / ||x||
            att = layer.self_attn
            for lin in (att.q_proj, att.k_proj, att.v_proj):
                lin.weight.zero_()
                lin.bias.zero_()
            att.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.input_layernorm.weight.fill_(1 / math.sqrt(HIDDEN))
        emb = model.model.embed_tokens.weight
        emb[:, TOK] *= 0.25
        emb[:, TOK.stop:] = 0
        emb[:, CONST] = 1.0
        for token, dim in (("<|im_start|>", SINK), (",", COMMA), (":", COLON), ("Ċ", NEWL), ("|", BAR)):
            emb[ids(token), dim] = A
        nums = [ids(str(i)) for i in range(1000)]
        emb[nums, NUM] = A
        emb[nums[:MAX_LABELS], DIGIT] = A
        # the label tokens' codes: orthogonal for the first 64 labels, one norm for all (a random code's norm
        # varies by about 18 %, which tilted every vote toward the labels with the longer codes)
        labels = emb[nums[:MAX_LABELS], TOK].double()
        norm = float(labels.norm(dim=1).mean())
        for i in range(min(MAX_LABELS, TOK.stop)):           # modified Gram-Schmidt, in order: deterministic
            for j in range(i):
                labels[i] -= (labels[i] @ labels[j]) * labels[j]
            labels[i] /= labels[i].norm()
        labels[TOK.stop:] /= labels[TOK.stop:].norm(dim=1, keepdim=True)
        labels *= norm
        emb[nums[:MAX_LABELS], TOK] = labels.float()
        dots = labels @ labels.T
        margin = float((dots.diag()[:, None] - dots + 1e9 * eye(MAX_LABELS, dtype=torch.float64)).min())
        if margin <= 0:
            raise ValueError("the label tokens' codes do not tell every two labels apart")
        code = value_code(settings.nfreq, settings.sigma_f).double()
        w = code.shape[1]
        if D % w or float((code @ code.T).min()) < -1e-9:
            raise ValueError(f"plant.nfreq {settings.nfreq} / sigma_f {settings.sigma_f}: the value kernel must "
                             f"be non-negative (the vote keys nothing elsewhere) and its code must tile {D} dims")
        if settings.relevance_gain and settings.nfreq != 1:
            raise ValueError(f"plant.relevance_gain {settings.relevance_gain} needs plant.nfreq 1 (a column's "
                             f"relevance is read from its one frequency); got nfreq {settings.nfreq}")
        # products in float64, cast once on assignment: float32 results would depend on how the BLAS splits
        # the work (thread count, instruction set), and so would the bytes of the base
        E = eye(D, w, dtype=torch.float64)
        emb[nums, S] = (A * code @ E.T).float()                         # slot 0 of the summary: own value
        exact = torch.randn(1000, NX, generator=g)
        emb[nums, EX] = A * exact / exact.norm(dim=1, keepdim=True)
        P = torch.roll(eye(D, dtype=torch.float64), w, 0)              # the column tag: the next w dims

        # layer 0: the previous token's identity and flags; the token id_back back (an answer's id)
        a, r = head(0, 0)
        offset(a, r, 1)
        copy(a, r, EX, PREV)
        for j, (src, dst) in enumerate(((COMMA, PCOMMA), (COLON, PCOLON), (BAR, PBAR))):
            a.v_proj.weight[r + NX + j, src] = 1.0
            a.o_proj.weight[dst, r + NX + j] = 1.0
        a, r = head(0, 1)
        offset(a, r, answer_id_back(tokenizer))
        copy(a, r, EX, IDB)

        # layer 1: a test row's first value takes the row id from the ':' before it (which holds the id
        # as PREV); any other token attends to a sink
        a, r = head(1, 0)
        offset(a, r, 1)
        sink_key(a, r)
        a.q_proj.bias[r + sink_d] = (peak + GATE) * sc
        a.q_proj.bias[r + flag_d] = 2 * GATE * sc / A
        a.k_proj.weight[r + flag_d, COLON] = 1.0
        copy(a, r, PREV, ROWID)

        # layers 2..7: doubling. Level k reaches 2^k tokens (2^(k-1) slots) back unless b[k-1] says the
        # row already started; b[0] = 1 - PCOMMA / A (a value after a comma continues its row)
        for k in range(1, 7):
            a, r = head(1 + k, 0)
            offset(a, r, 2 ** k)
            sink_key(a, r)
            if k == 1:
                a.q_proj.bias[r + sink_d] = (peak + GATE) * sc
                a.q_proj.weight[r + sink_d, PCOMMA] = -2 * GATE * sc / A
            else:
                a.q_proj.bias[r + sink_d] = (peak - GATE) * sc
                a.q_proj.weight[r + sink_d, B[k - 1]] = 2 * GATE * sc / A
            copy(a, r, S, S, matrix=torch.linalg.matrix_power(P, 2 ** (k - 1)).float())
            copy(a, r, ROWID, ROWID, at=D)
            if k == 1:   # the source's b[0]; a sink's is 1 (CONST 1, PCOMMA 0)
                a.v_proj.weight[r + D + NX, CONST] = A
                a.v_proj.weight[r + D + NX, PCOMMA] = -1.0
            else:        # a sink's own b[k-1] is 1 from level 1 on
                a.v_proj.weight[r + D + NX, B[k - 1]] = 1.0
            a.o_proj.weight[B[k], r + D + NX] = 1.0

        # layer 8: the summary one token back (at `|` and at a test row's newline) and two back (at a
        # shot's label token)
        a, r = head(8, 0)
        offset(a, r, 1)
        copy(a, r, S, S1)
        copy(a, r, ROWID, ROWID1, at=D)
        a, r = head(8, 1)                                               # only at a shot's label token
        offset(a, r, 2)
        sink_key(a, r)
        a.q_proj.bias[r + sink_d] = (peak + GATE) * sc
        a.q_proj.weight[r + sink_d, PBAR] = -2 * GATE * sc / A
        copy(a, r, S, KS)

        # layer 9: the router. Where an answer's label comes next (its id id_back back), attend to the newline ending the
        # test row with that id and copy its summary; elsewhere the sink wins
        match, newline = 40.0, 15.0
        a, r = head(9, 0)
        id_d = content_d[:NX]
        a.q_proj.weight[r + id_d, IDB] = match * sc / A * eye(NX)
        a.k_proj.weight[r + id_d, ROWID1] = eye(NX) / A
        a.q_proj.bias[r + flag_d] = newline * sc
        a.k_proj.weight[r + flag_d, NEWL] = 1.0 / A
        sink_key(a, r)
        a.q_proj.bias[r + sink_d] = (match + newline - GATE) * sc
        copy(a, r, S1, S1)

        # layer 1, head 1: 2 / (shots so far + 2): uniform over the shot labels so far and the two sinks (the
        # system and user turns' <|im_start|>), value 1 at a sink; it damps the first shots' noisy statistics
        a, r = head(1, 1)
        sink_key(a, r)
        a.q_proj.bias[r + sink_d] = LABEL_KEY * sc
        label_key(a, r)
        a.v_proj.weight[r, SINK] = 1.0
        a.o_proj.weight[INV, r] = 1.0

        # layer 10, at each shot label: the column means of the shots of its class so far minus those of all
        # shots so far, in each slot's centred coordinate U = sin(theta - pi/4) (one dim per slot, ~ z / 5.3);
        # its MLP squares them: the shot's between-class spread per column
        n_slot = D // w
        units = torch.arange(n_slot)
        proj = torch.zeros(n_slot, D, dtype=torch.float64)
        proj[units, w * units] = -math.sqrt(0.5)
        proj[units, w * units + 1] = math.sqrt(0.5)
        ids_d = content_d[:TOK.stop]
        for h, sign in ((0, 1.0), (1, -1.0)):
            a, r = head(10, h)
            label_key(a, r)
            if h == 0:      # same label: <TOK_q, TOK_k> over the labels' margin
                a.q_proj.weight[r + ids_d, TOK] = CLASS_MATCH * sc / margin * eye(TOK.stop)
                a.k_proj.weight[r + ids_d, TOK] = eye(TOK.stop)
            a.v_proj.weight[r:r + n_slot, KS] = (proj / A).float()
            a.o_proj.weight[DREL, r:r + n_slot] = sign * A_D * eye(n_slot)
        mlp = model.model.layers[10].mlp
        lift(model.model.layers[10].post_attention_layernorm, DREL, A_D)
        mlp.gate_proj.weight[:2 * n_slot] = 0          # these units read their slot alone
        mlp.up_proj.weight[:2 * n_slot] = 0
        for u0, sign in ((0, 1.0), (n_slot, -1.0)):   # silu(C + d) d + silu(C - d)(-d) = 2 d^2 (C >> |d|)
            mlp.gate_proj.weight[u0 + units, CONST] = SQUARE_C
            mlp.gate_proj.weight[u0 + units, DREL.start + units] = sign / A
            mlp.up_proj.weight[u0 + units, DREL.start + units] = sign / A
            mlp.down_proj.weight[RB.start + units, u0 + units] = A2 / (2 * U_VAR)

        # layer 11, where an answer's label comes next (and everywhere else, harmlessly): r_c = the mean of
        # the shots' spreads, the first shots damped by exp(-warmup * 2 / (shots so far + 2)); its MLP weights
        # the row's summary per column, w_c = silu(gain (r_c + offset)) (gain 0: w = 1, the plain vote)
        a, r = head(11, 0)
        label_key(a, r)
        a.q_proj.bias[r + sink_d - 1] = -settings.relevance_warmup * sc
        a.k_proj.weight[r + sink_d - 1, INV] = 1.0 / A
        a.v_proj.weight[r:r + n_slot, RB] = eye(n_slot)
        a.o_proj.weight[RQ, r:r + n_slot] = eye(n_slot)
        mlp = model.model.layers[11].mlp
        lift(model.model.layers[11].post_attention_layernorm, RQ, A2)
        dims = torch.arange(D)
        mlp.gate_proj.weight[:D] = 0
        mlp.up_proj.weight[:D] = 0
        gain = settings.relevance_gain
        mlp.gate_proj.weight[dims, CONST] = gain * settings.relevance_offset if gain else NEUTRAL
        mlp.gate_proj.weight[dims, RQ.start + dims // w] = gain / A
        mlp.up_proj.weight[dims, S1.start + dims] = 1.0 / A
        mlp.down_proj.weight[S1W.start + dims, dims] = A2

        # layer 12: the vote, over tokens right after `|` (shot labels); value = the label's embedding
        label_bonus, gain = 30.0, 1000.0
        a, r = head(12, 0)
        lift(model.model.layers[12].input_layernorm, S1W, A2)
        a.q_proj.weight[r + content_d, S1W] = settings.tau * sc / A * eye(D)
        a.k_proj.weight[r + content_d, KS] = eye(D) / A
        a.q_proj.bias[r + flag_d] = label_bonus * sc
        a.k_proj.weight[r + flag_d, PBAR] = 1.0 / A
        copy(a, r, TOK, TOK, matrix=gain * eye(TOK.stop))
        a.v_proj.weight[r + TOK.stop, DIGIT] = 1.0      # every voter is a label token: lift all labels
        a.o_proj.weight[DIGIT, r + TOK.stop] = gain
        # the vote dominates the last norm, which caps logit gaps near sqrt(HIDDEN) |TOK|^2 / |TOK| ~ 1:
        # scale the token dims of the final norm so a clean vote is a confident one (gap ~6: all 100 label
        # tokens get the lift below, and a smaller gap hands the training loss's mass to absent labels)
        model.model.norm.weight[TOK] = 6.0 * math.sqrt(512 / HIDDEN)
        model.model.norm.weight[DIGIT] = 60.0 * math.sqrt(512 / HIDDEN)    # + ~8 on the label tokens over all other tokens
    return model


def save_planted(out, tokenizer, settings: PlantParams) -> dict:
    """Plant and save a base into ``out`` (HF ``save_pretrained``, safetensors, the tokenizer and
    ``plant.json``); returns what plant.json records. Written complete beside ``out`` first, then each file
    moved in (other files in ``out``, e.g. a README, stay)."""
    import hashlib
    import json
    import os
    from pathlib import Path

    from mllm.core.atomic import atomic_dir
    from mllm.text.tokenizer import save_tokenizer

    model = plant_base(tokenizer, settings)
    out = Path(out)
    staging = out.with_name(f".{out.name}.planting")
    with atomic_dir(staging) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        weights = (Path(tmp) / "model.safetensors").read_bytes()
        record = {"kind": "kernel-vote (compiled)", "settings": settings.model_dump(),
                  "params": sum(p.numel() for p in model.parameters()),
                  "model_sha256": hashlib.sha256(weights).hexdigest()}
        (Path(tmp) / PLANT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(staging.iterdir()):
        os.replace(f, out / f.name)
    staging.rmdir()
    return record
