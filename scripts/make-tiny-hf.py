#!/usr/bin/env python3
"""Write tiny random-weight Hugging Face checkpoints and their reference outputs.

For the tests that compare the project's own (burn) implementations of the
Llama, Qwen2, Mistral and BERT/sentence-transformers architectures against
transformers and sentence-transformers. Needs the virtual environment that
scripts/install-test-tools makes:

    .tools/hf/bin/python scripts/make-tiny-hf.py OUT_DIR

It writes OUT_DIR/{llama,qwen2,mistral,bert,bert-cls}, each a checkpoint
directory plus a `reference.json` computed on the CPU in float32:

- decoders (as `save_pretrained` writes them): the full logits of one text, a
  32-token greedy continuation (every token the argmax of the raw logits, never
  eos, with the smallest top-1/top-2 gap at least 1e-3 so a small numerical
  difference cannot flip it), and chat conversations rendered and tokenized by
  `apply_chat_template` (mistral: also conversations its template rejects);
- encoders: sentence-transformers embeddings of six sentences, one longer than
  max_seq_length, and their token counts after truncation. `bert` (mean pooling,
  normalized) has the layout of sentence-transformers before version 6 (most of
  the Hub), `bert-cls` (CLS pooling) the one SentenceTransformer.save writes now.

Tokenizers are made here from the small built-in CORPUS: a byte-level BPE
(vocab 400) with each family's special tokens for the decoders, an uncased
WordPiece (vocab 300) for BERT. Weights are N(0, 0.2²), norm gains
1 + N(0, 0.1²), biases N(0, 0.1²), so logits are far from zero; the decoders'
output rows of tokens that are no text on their own (lone bytes) are zero, so
greedy text is valid UTF-8. The llama and mistral chat templates are saved in
tokenizer_config.json (as on most of the Hub), the qwen2 one as
chat_template.jinja (transformers 5's default). Nothing is downloaded; the same
versions give byte-identical output.
"""

import json
import os
import sys
import tempfile
from collections import Counter

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CORPUS = """\
The keeper of the lighthouse climbed the stairs every evening. He counted the steps, one
hundred and twelve of them, and at the top he lit the lamp and wrote the time in his book.
Ships passed in the night and the light turned slowly over the water.

A model server loads its weights into the memory of the graphics card. When two servers share
one card, each must know how much memory the other holds, or the second one fails to start.
The agent watches every process, counts the bytes it allocates, and reports them to the cluster.

In the spring the farmers plant wheat and barley in the fields near the river. The rain comes in
April, the sun in June, and by the end of August the grain is ready. Children help with the
harvest, and in the evening everyone eats bread, cheese and apples under the old trees.

Numbers are written with digits: 0 1 2 3 4 5 6 7 8 9. Prices look like $12.50 or 7.99, dates
like 2024-05-17, and times like 10:30. Questions end with a question mark? Exclamations end
with an exclamation mark! Lists use commas, semicolons; and sometimes (brackets) or "quotes".

The quick brown fox jumps over the lazy dog. A wizard's job is to vex chumps quickly in fog.
Sphinx of black quartz, judge my vow. Pack my box with five dozen liquor jugs.
"""

WEIGHT_STD = 0.2
MAX_SEQ_LENGTH = 64
NEW_TOKENS = 32
MIN_MARGIN = 1e-3

PROMPTS = [
    "The keeper of the lighthouse",
    "A model server loads its weights",
    "In the spring the farmers",
    "Questions end with",
    "Sphinx of black quartz, judge my vow.",
    "The agent watches every process",
]

LOGITS_TEXT = "Ships passed in the night, and the light turned over the water."

CONVERSATIONS = [
    [{"role": "user", "content": "Hello, who are you?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three colours."},
    ],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times three?"},
    ],
    [{"role": "user", "content": "  Où est le café? ☕ \n"}],
]

LLAMA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN2_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL_ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."
MISTRAL_TEMPLATE = (
    """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('"""
    + MISTRAL_ALTERNATE
    + """') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported after the optional system message!') }}
    {%- endif %}
{%- endfor %}
"""
)

MISTRAL_BAD_CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}, {"role": "user", "content": "Hello again"}],
    [{"role": "assistant", "content": "I speak first."}],
]

LONG_SENTENCE = " ".join(
    f"Sentence {i} says that the agent counts the memory of every process on the card." for i in range(3)
)
SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A model server loads its weights into the memory of the graphics card.",
    "Prices: $12.50, 7.99 and 1000 (naïve café, 東京, €).",
    "rain",
    LONG_SENTENCE,
]


def byte_level_bpe(specials, bos=None):
    """A byte-level BPE trained on CORPUS; `specials` first, `bos` prepended by the post-processor."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer)
    if bos is None:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def randomize(model, seed):
    """Replace every parameter: weights N(0, WEIGHT_STD²), norm gains 1 + N(0, 0.1²), biases N(0, 0.1²)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(WEIGHT_STD * noise)
    model.eval()


def greedy(model, tokenizer):
    """The first prompt of PROMPTS whose greedy continuation is safe to compare against."""
    for text in PROMPTS:
        ids = tokenizer(text, return_tensors="pt").input_ids
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.eos_token_id,
        )
        new_ids = out.sequences[0, ids.shape[1] :].tolist()
        logits = torch.cat(out.logits).float()
        top2 = logits.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
        argmax_is_chosen = logits.argmax(-1).tolist() == new_ids
        if margin >= MIN_MARGIN and argmax_is_chosen and len(set(new_ids)) > 4:
            return {
                "text": text,
                "ids": ids[0].tolist(),
                "new_ids": new_ids,
                "new_text": tokenizer.decode(new_ids, skip_special_tokens=True),
                "min_margin": margin,
            }
    sys.exit(f"make-tiny-hf: no prompt gives a clear greedy continuation for {type(model).__name__}")


def chat(tokenizer, conversations):
    """Each conversation, rendered with the generation prompt and tokenized (no special tokens added)."""
    entries = []
    for messages in conversations:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        assert ids == tokenizer(rendered, add_special_tokens=False).input_ids
        entries.append({"messages": messages, "rendered": rendered, "ids": ids})
    return entries


def mute_unreadable(model, tokenizer):
    """Zero the output rows of tokens that do not decode to printable text on their own (lone
    bytes of multi-byte characters, control characters), so greedy text is valid UTF-8."""
    pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    rows = [i for i, p in enumerate(pieces) if "\ufffd" in p or not all(c.isprintable() or c in " \n" for c in p)]
    with torch.no_grad():
        model.get_output_embeddings().weight[rows] = 0


def decoder(out, model_class, config, tokenizer, seed, save_jinja_files, chat_errors=None):
    """Build a random `model_class`, save it and `tokenizer` under `out` with their reference.json."""
    model = model_class(config)
    randomize(model, seed)
    mute_unreadable(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out, save_jinja_files=save_jinja_files)
    ids = tokenizer(LOGITS_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
    reference = {
        "architecture": type(model).__name__,
        "params": parameters(model),
        "logits": {"text": LOGITS_TEXT, "ids": ids[0].tolist(), "values": logits.tolist()},
        "greedy": greedy(model, tokenizer),
        "chat": chat(tokenizer, CONVERSATIONS),
    }
    if chat_errors is not None:
        reference["chat_errors"] = chat_errors
    write_json(os.path.join(out, "reference.json"), reference)


def llama(out):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(specials, bos="<|begin_of_text|>"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    tokenizer.chat_template = LLAMA_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=True,
        attention_bias=False,
        initializer_range=WEIGHT_STD,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    decoder(out, LlamaForCausalLM, config, tokenizer, seed=1, save_jinja_files=False)


def qwen2(out):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(specials),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = QWEN2_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        initializer_range=WEIGHT_STD,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    decoder(out, Qwen2ForCausalLM, config, tokenizer, seed=2, save_jinja_files=True)


def mistral(out):
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(specials, bos="<s>"),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tokenizer.chat_template = MISTRAL_TEMPLATE
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=None,
        tie_word_embeddings=False,
        initializer_range=WEIGHT_STD,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    chat_errors = []
    for messages in MISTRAL_BAD_CONVERSATIONS:
        try:
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # jinja2's TemplateError, raised by raise_exception
            assert MISTRAL_ALTERNATE in str(error), error
            chat_errors.append({"messages": messages, "error": MISTRAL_ALTERNATE})
        else:
            sys.exit(f"make-tiny-hf: the mistral template accepted {messages}")
    decoder(out, MistralForCausalLM, config, tokenizer, seed=3, save_jinja_files=False, chat_errors=chat_errors)


def wordpiece():
    """An uncased BERT WordPiece tokenizer with a vocab (300) counted from CORPUS: the special
    tokens, every character alone and as a continuation, then the most frequent words and word
    endings. (tokenizers' WordPieceTrainer is not deterministic.)"""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(CORPUS)))
    chars = sorted(set("".join(words)))
    pieces = Counter(words)
    for word, count in words.items():
        for n in range(2, len(word)):
            pieces["##" + word[-n:]] += count
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    ranked = [piece for piece, _ in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])) if piece not in vocab]
    vocab += ranked[: 300 - len(vocab)]
    tokenizer = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.add_special_tokens(vocab[:5])
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tokenizer


def save_classic(out, model, tokenizer, pooling, normalize):
    """The sentence-transformers layout as versions before 6 wrote it (most of the Hub, e.g.
    all-MiniLM-L6-v2): max_seq_length in sentence_bert_config.json, one boolean per pooling mode."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(os.path.join(out, "modules.json"), modules)
    write_json(os.path.join(out, "sentence_bert_config.json"), {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    modes = ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken"]
    chosen = {"cls": "cls_token", "mean": "mean_tokens"}[pooling]
    pooling_config = {"word_embedding_dimension": model.config.hidden_size}
    pooling_config.update({f"pooling_mode_{mode}": mode == chosen for mode in modes})
    pooling_config["include_prompt"] = True
    os.makedirs(os.path.join(out, "1_Pooling"))
    write_json(os.path.join(out, "1_Pooling", "config.json"), pooling_config)


def save_current(out, model, tokenizer, pooling, normalize):
    """The layout SentenceTransformer.save writes (version 6: max_seq_length only as the
    tokenizer's model_max_length, `pooling_mode` a string)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        modules = [Transformer(tmp, max_seq_length=MAX_SEQ_LENGTH), Pooling(model.config.hidden_size, pooling)]
        if normalize:
            modules.append(Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(out, create_model_card=False)


def bert(out, pooling, normalize, seed, save):
    """A sentence-transformers directory (BertModel → Pooling(`pooling`) [→ Normalize]) written by `save`."""
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece(), do_lower_case=True, model_max_length=128)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        initializer_range=WEIGHT_STD,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertModel(config)
    randomize(model, seed)
    save(out, model, tokenizer, pooling, normalize)
    st = SentenceTransformer(out, device="cpu")
    assert st.max_seq_length == MAX_SEQ_LENGTH, st
    assert len(st) == (3 if normalize else 2), st
    embeddings = st.encode(SENTENCES, convert_to_numpy=True)
    token_counts = [
        len(st.tokenizer(s, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]) for s in SENTENCES
    ]
    assert max(token_counts) == MAX_SEQ_LENGTH
    write_json(
        os.path.join(out, "reference.json"),
        {
            "params": parameters(model, skip="pooler."),
            "sentences": SENTENCES,
            "embeddings": embeddings.tolist(),
            "pooling": pooling,
            "normalize": normalize,
            "token_counts": token_counts,
        },
    )


def parameters(model, skip=None):
    """Parameters (tied ones once), without those under `skip`, which sentence embeddings do not use."""
    return sum(p.numel() for name, p in model.named_parameters() if not (skip and name.startswith(skip)))


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)
        f.write("\n")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make-tiny-hf.py OUT_DIR")
    out = sys.argv[1]
    torch.set_num_threads(2)
    llama(os.path.join(out, "llama"))
    qwen2(os.path.join(out, "qwen2"))
    mistral(os.path.join(out, "mistral"))
    bert(os.path.join(out, "bert"), pooling="mean", normalize=True, seed=4, save=save_classic)
    bert(os.path.join(out, "bert-cls"), pooling="cls", normalize=False, seed=5, save=save_current)


if __name__ == "__main__":
    main()
