#!/usr/bin/env python3
"""Write a tiny Llama-architecture GGUF model with random weights.

For tests that need a real OpenAI-compatible model server (e.g.
llama-cpp-python's `python -m llama_cpp.server`) on CPU, without
downloading weights and without torch/transformers. Only needs the
`gguf` package (the llama.cpp project's own GGUF writer) and numpy:

    pip install gguf numpy
    python scripts/make-tiny-gguf.py /tmp/tiny.gguf [--seed N]

The model is 2 layers, hidden 64, 4 heads (2 KV heads), FFN 128, context
256, vocab ~1000, all tensors f32 (~0.8 MB). Its tokenizer is SentencePiece-style
(tokenizer.ggml.model = "llama"): <unk>, <s>, </s>, the 256 byte tokens
<0x00>..<0xFF>, every printable ASCII character, and a few hundred
"▁"-prefixed word pieces (with all their prefixes, so SPM's bigram merges
can reach them). A simple Jinja chat template is embedded so
/v1/chat/completions works.

The output is gibberish, but readable gibberish: the output-projection rows
of the control and byte tokens are zero while the rows of the text pieces
are large, so sampling almost never picks </s> (generations run to
max_tokens) or a stray byte (no invalid UTF-8 in streamed deltas).

The same --seed gives a byte-identical file.
"""

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("make-tiny-gguf: needs the `gguf` package (pip install gguf numpy)")

WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one "
    "have this from or had by hot word but what some we can out other were all there "
    "when up use your how said an each she which do their time if will way about many "
    "then them write would like so these her long make thing see him two has look more "
    "day could go come did number sound no most people my over know water than call "
    "first who may down side been now find any new work part take get place made live "
    "where after back little only round man year came show every good me give our under "
    "name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high "
    "such follow act why ask men change went light kind off need house picture try us "
    "again animal point mother world near build self earth father head stand own page "
    "should country found answer school grow study still learn plant cover food sun four "
    "between state keep eye never last let thought city tree cross farm hard start might "
    "story saw far sea draw left late run while press close night real life few north "
    "hello world model token stream chunk server cache memory device vram keeper"
).split()

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_vocab():
    """Return (tokens, scores, types) for an SPM ("llama") vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    scores = [0.0, 0.0, 0.0]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE)

    pieces = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    seen = set(pieces)
    for w in WORDS:
        full = "\u2581" + w
        for n in range(2, len(full) + 1):  # every prefix: SPM merges grow left to right
            p = full[:n]
            if p not in seen:
                seen.add(p)
                pieces.append(p)
    for p in pieces:
        tokens.append(p)
        # Longer pieces win the SPM bigram merge; negative like real SPM log-probs.
        scores.append(-1000.0 + 10.0 * len(p) - 0.001 * len(tokens))
        types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="path of the .gguf file to write")
    ap.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=256)
    args = ap.parse_args()

    if args.hidden % args.heads or args.heads % args.kv_heads:
        sys.exit("make-tiny-gguf: hidden must divide by heads, heads by kv-heads")

    rng = np.random.default_rng(args.seed)
    tokens, scores, types = build_vocab()
    n_vocab = len(tokens)
    n_embd, n_ff = args.hidden, args.ffn
    head_dim = n_embd // args.heads
    n_embd_kv = head_dim * args.kv_heads

    def rand(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("vramkeeper-tiny-random")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    w.add_context_length(args.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(args.layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(args.heads)
    w.add_head_count_kv(args.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types([int(t) for t in types])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are (rows=out, cols=in); the writer reverses them into
    # GGML order, which is what llama.cpp expects for these names.
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd, std=1.0))
    for i in range(args.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(n_embd, n_embd))
        w.add_tensor(p + "attn_k.weight", rand(n_embd_kv, n_embd))
        w.add_tensor(p + "attn_v.weight", rand(n_embd_kv, n_embd))
        w.add_tensor(p + "attn_output.weight", rand(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    # Hidden states leave output_norm with RMS ~1, so a row std of 0.5 gives
    # text-piece logits a spread of ~4 against 0 for the zeroed rows.
    out = rand(n_vocab, n_embd, std=0.5)
    is_text = np.array([t == gguf.TokenType.NORMAL for t in types])
    out[~is_text] = 0.0
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: llama, {args.layers} layers, hidden {n_embd}, "
          f"vocab {n_vocab}, ctx {args.ctx}, seed {args.seed}")


if __name__ == "__main__":
    main()
