"""Training throughput of the AWD-LSTM body at the size of PyTorch's word-language-model example.

Measures, on the same machine and corpus, training tokens per second of
  1. ``baseline``: a plain loop written like PyTorch's own example (embedding, nn.LSTM 2x200, tied
     linear decoder, cross-entropy, clipping, manual SGD update);
  2. ``lstm-2x200``: ``softmax-bench train configs/bench/lstm-2x200.yaml`` (no dropout);
  3. ``lstm-2x200-awd``: the same with the AWD-LSTM regularizers on (embedding, input, hidden and
     output dropout, DropConnect, AR/TAR at the AWD-LSTM PTB values).
Each is reported also as a fraction of the machine's measured float32 GEMM rate (model FLOPs per
token x tokens/s / GEMM FLOP/s). Writes ``results/bench/train_throughput.json``.

    python scripts/bench_train_throughput.py --data ../shared/data/wikitext-2-lite --steps 150
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lm.config import load_config
from lm.data import load_corpus
from lm.data.batching import batchify
from lm.io import atomic_write_json
from lm.provenance import provenance
from lm.train import train

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "bench" / "lstm-2x200.yaml"
AWD_REGULARIZERS = {
    "model.dropout_embedding": 0.1,
    "model.dropout_input": 0.4,
    "model.dropout_hidden": 0.25,
    "model.dropout_output": 0.4,
    "model.weight_drop": 0.5,
    "model.activation_regularization": 2.0,
    "model.temporal_activation_regularization": 1.0,
}


def gemm_rate(size: int = 2048, repeats: int = 10) -> float:
    """float32 FLOP/s of a large square matrix product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def flops_per_token(d: int, n_layers: int, vocab: int) -> float:
    """Forward + backward (3x forward) multiply-adds x 2 of the LSTM stack and the decoder."""
    lstm = n_layers * 4 * (d + d) * d * 2
    decoder = d * vocab * 2
    return 3 * (lstm + decoder)


class ExampleModel(nn.Module):
    """The model of PyTorch's word_language_model example (LSTM, tied, no dropout)."""

    def __init__(self, vocab: int, d: int = 200, n_layers: int = 2):
        super().__init__()
        self.encoder = nn.Embedding(vocab, d)
        self.rnn = nn.LSTM(d, d, n_layers)
        self.decoder = nn.Linear(d, vocab)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output), hidden


def baseline(tokens: torch.Tensor, vocab: int, steps: int, batch: int = 20, bptt: int = 35, lr: float = 20.0) -> float:
    """Training tokens/s of the example's loop (sequence-first tensors, as in the example)."""
    torch.manual_seed(1111)
    data = batchify(tokens, batch).t().contiguous()  # (L, B) as in the example
    model = ExampleModel(vocab)
    criterion = nn.CrossEntropyLoss()
    hidden = (torch.zeros(2, batch, 200), torch.zeros(2, batch, 200))
    model.train()
    n_tokens, started = 0, time.perf_counter()
    for step in range(steps):
        i = (step * bptt) % (data.size(0) - 1 - bptt)
        inputs, targets = data[i : i + bptt], data[i + 1 : i + 1 + bptt].reshape(-1)
        hidden = tuple(h.detach() for h in hidden)
        model.zero_grad()
        output, hidden = model(inputs, hidden)
        loss = criterion(output.view(-1, vocab), targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        loss.item()
        n_tokens += targets.numel()
    return n_tokens / (time.perf_counter() - started)


def suite_run(data: str, steps: int, extra: dict, out: Path) -> dict:
    overrides = {"data.path": data, "train.max_steps": steps, "train.test_batch_size": 10,
                 "run.output_dir": str(out), **extra}
    config = load_config(CONFIG, [f"{k}={v}" for k, v in overrides.items()])
    return train(config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "wikitext-2-lite"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best of them is reported")
    parser.add_argument("--output", default=str(ROOT / "results" / "bench" / "train_throughput.json"))
    args = parser.parse_args()

    corpus = load_corpus(path=args.data)
    vocab = len(corpus.vocab)
    rate = gemm_rate()
    per_token = flops_per_token(200, 2, vocab)
    samples: dict[str, list[float]] = {"baseline": [], "lstm-2x200": [], "lstm-2x200-awd": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so a load change hits every variant alike
            samples["baseline"].append(baseline(corpus.train, vocab, args.steps))
            for name, extra in (("lstm-2x200", {}), ("lstm-2x200-awd", AWD_REGULARIZERS)):
                result = suite_run(args.data, args.steps, extra, Path(tmp) / f"{name}-{repeat}")
                samples[name].append(result["tokens_per_second"])
    runs = {
        name: {"tokens_per_second": max(values), "samples": values,
               **({"overrides": AWD_REGULARIZERS} if name == "lstm-2x200-awd" else {})}
        for name, values in samples.items()
    }
    for run in runs.values():
        run["fraction_of_gemm_rate"] = run["tokens_per_second"] * per_token / rate
    report = {
        "benchmark": "train_throughput",
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + sys.argv[1:]),
        "corpus": args.data,
        "vocab_size": vocab,
        "steps": args.steps,
        "repeats": args.repeats,
        "tokens_per_step": 20 * 35,
        "gemm_float32_flops_per_second": rate,
        "model_flops_per_token": per_token,
        "targets": {"lstm-2x200": 3000, "lstm-2x200-awd": 2400},
        "runs": runs,
        **provenance("cpu"),
    }
    atomic_write_json(args.output, report)
    for name, run in runs.items():
        print(f"{name:16s} {run['tokens_per_second']:8.0f} tokens/s  ({run['fraction_of_gemm_rate']:.1%} of GEMM rate)")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
