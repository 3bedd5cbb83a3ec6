"""Write a small random-weight cross-encoder reranker GGUF (BERT with a rank head).

No reranker can be downloaded here, so tests and benchmarks use this one: the layout
llama.cpp's converter writes for a ``BertForSequenceClassification`` model (token,
position and token-type embeddings, post-norm encoder layers, the classification head
``cls.*`` and its output projection ``cls.output.*``), ``bert.pooling_type`` = rank, and
a WordPiece vocabulary in llama.cpp's phantom-space form (a word-initial piece starts
with U+2581, a continuation piece has no ``##``). The weights are random from a fixed
seed, so the scores are noise, but the same noise every time: a server that scores this
file right orders documents exactly as llama.cpp's own ``llama-server --rerank`` does.

    python benchmarks/synthetic/make_reranker.py OUT.gguf [--seed N] [--layers N]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import gguf
import numpy as np

# The ids BERT vocabularies give their special tokens (llama.cpp's WPM defaults).
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103

# Whole words so that ordinary English text tokenizes to more than letters.
WORDS = """
the of and to in is was for on that with as by at from it an be this are or his which
but not have has had were they their one all we can her there been if more when will
would who so no she other its may these about into than them some could time only new
two first then do any like my now over such our man me even most made after also did
many before must through back years where much your way well down should because each
just those people how too little state good very make world still own see men work long
get here between both life being under never day same another know while last might us
great old year off come since against go came right used take three water fire earth air
city river mountain sea ocean forest tree flower garden house home school book paper
question answer relevant document query search rank score model data text word language
cat dog bird fish horse cow animal food bread apple orange fruit milk coffee tea wine
paris london berlin rome tokyo france england germany italy japan capital country king
queen war peace history science math physics chemistry biology music art film game sport
football tennis computer software program code python server network database memory
engine car train plane ship road bridge tower church market shop bank money price cost
red blue green white black yellow color light dark sun moon star sky rain snow wind cold
hot summer winter spring autumn morning night today tomorrow yesterday week month hour
""".split()


def vocabulary() -> tuple[list[str], list[int]]:
    """A WordPiece vocabulary of a few thousand tokens, ids as BERT's (101 = [CLS]...)."""
    control, normal = int(gguf.TokenType.CONTROL), int(gguf.TokenType.NORMAL)
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)]
    tokens += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [control] + [int(gguf.TokenType.UNUSED)] * 99
    types += [int(gguf.TokenType.UNKNOWN), control, control, control]
    chars = string.ascii_lowercase + string.digits + string.punctuation
    letters = string.ascii_lowercase
    pieces = [*chars, *(a + b for a in letters for b in letters)]
    words = [*chars, *(a + b for a in letters for b in letters), *WORDS]
    seen = set(tokens)
    for text in [*pieces, *("\u2581" + w for w in words)]:
        if text not in seen:
            seen.add(text)
            tokens.append(text)
            types.append(normal)
    return tokens, types


def tensors(rng: np.random.Generator, n_vocab: int, args: argparse.Namespace):
    """(name, array) for every tensor llama.cpp's BERT loader reads, in its shapes."""
    n, ff = args.embd, args.ff

    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(size: int, centre: float = 0.0) -> np.ndarray:
        return (centre + 0.1 * rng.standard_normal(size)).astype(np.float32)

    yield "token_embd.weight", dense(n_vocab, n)
    yield "token_types.weight", dense(2, n)
    yield "position_embd.weight", dense(args.ctx, n)
    yield "token_embd_norm.weight", vec(n, 1.0)
    yield "token_embd_norm.bias", vec(n)
    for i in range(args.layers):
        blk = f"blk.{i}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            yield f"{blk}.{part}.weight", dense(n, n)
            yield f"{blk}.{part}.bias", vec(n)
        yield f"{blk}.attn_output_norm.weight", vec(n, 1.0)
        yield f"{blk}.attn_output_norm.bias", vec(n)
        yield f"{blk}.ffn_up.weight", dense(ff, n)
        yield f"{blk}.ffn_up.bias", vec(ff)
        yield f"{blk}.ffn_down.weight", dense(n, ff)
        yield f"{blk}.ffn_down.bias", vec(n)
        yield f"{blk}.layer_output_norm.weight", vec(n, 1.0)
        yield f"{blk}.layer_output_norm.bias", vec(n)
    yield "cls.weight", dense(n, n)
    yield "cls.bias", vec(n)
    yield "cls.output.weight", dense(1, n)
    yield "cls.output.bias", vec(1)


def write_header(writer: gguf.GGUFWriter, args: argparse.Namespace) -> int:
    """Hyperparameters and vocabulary; returns the vocabulary's size."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("mullama-test-reranker")
    writer.add_context_length(args.ctx)
    writer.add_embedding_length(args.embd)
    writer.add_feed_forward_length(args.ff)
    writer.add_block_count(args.layers)
    writer.add_head_count(args.heads)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, types = vocabulary()
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(2)
    writer.add_bos_token_id(CLS)
    writer.add_sep_token_id(SEP)
    writer.add_pad_token_id(PAD)
    writer.add_unk_token_id(UNK)
    writer.add_mask_token_id(MASK)
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)
    writer.add_add_eos_token(False)
    return len(tokens)


def make_reranker(out: Path, seed: int = 0, layers: int = 2) -> Path:
    """Write the reranker to ``out`` (deterministic for a seed) and return the path."""
    args = parse([str(out), "--seed", str(seed), "--layers", str(layers)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch="bert")
    n_vocab = write_header(writer, args)
    for name, array in tensors(np.random.default_rng(args.seed), n_vocab, args):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ff", type=int, default=256)
    p.add_argument("--ctx", type=int, default=512)
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse()
    print(make_reranker(a.out, a.seed, a.layers))
