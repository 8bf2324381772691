"""Write the real CLIP BPE tokenizer (vocab.json + merges.txt) under assets/tokenizer/.

The vocabulary ships inside the open_clip_torch wheel (MIT) as bpe_simple_vocab_16e6.txt.gz;
this rebuilds the 49408-token vocabulary exactly as CLIP's SimpleTokenizer does:
256 byte symbols, the same with '</w>', 48894 merges, then the two special tokens.

    pip download --no-deps open_clip_torch && unzip -p open_clip_torch-*.whl \
        open_clip/bpe_simple_vocab_16e6.txt.gz > /tmp/bpe.txt.gz
    python -m training.make_tokenizer /tmp/bpe.txt.gz
"""
import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP reversible byte → printable-unicode table, in CLIP's vocabulary order:
    the printable bytes first (as themselves), then the rest mapped to 256, 257, …"""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def main(bpe_gz: str) -> None:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(merges) == 48894
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (OUT / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    print(f"wrote {len(vocab)} tokens, {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
