"""``softmax-bench probe``: the bottleneck of Hugging Face causal LMs, on tiny random models built here.

No network: models are built from configs with random weights (GPT-2 with LayerNorm, a GPT-2 variant
with an output bias, Llama with RMSNorm, Gemma-2 with final-logit soft-capping), saved with
``save_pretrained`` where the CLI needs a folder, with a character-level tokenizer made here.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")  # the hf extra; installed on the reference machine

from bottleneck_analysis.probe import float64_head, largest_gap, logprob_spectra, probe_model, sliding_windows  # noqa: E402
from bottleneck_analysis.unargmaxable import check_certificate  # noqa: E402
from lm.cli import main  # noqa: E402
from lm.errors import UserError  # noqa: E402

D, V = 12, 96
TEXT = "the cat sat on the mat. a dog ran after the cat, and the cat ran up a tree!\n" * 6


def quiet(build):
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        torch.manual_seed(0)
        return build().eval()
    finally:
        transformers.logging.set_verbosity(verbosity)


def gpt2(**options):
    config = transformers.GPT2Config(n_embd=D, n_layer=1, n_head=2, vocab_size=V, n_positions=64,
                                     bos_token_id=1, eos_token_id=1, **options)
    return quiet(lambda: transformers.GPT2LMHeadModel(config))


def gpt2_with_bias():
    model = gpt2(tie_word_embeddings=False)
    torch.manual_seed(1)
    model.lm_head = torch.nn.Linear(D, V, bias=True)
    torch.nn.init.normal_(model.lm_head.bias, std=0.5)
    return model.eval()


def llama():
    config = transformers.LlamaConfig(hidden_size=D, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, vocab_size=V, max_position_embeddings=64,
                                      bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return quiet(lambda: transformers.LlamaForCausalLM(config))


def gemma2(softcap=1.0):
    config = transformers.Gemma2Config(hidden_size=D, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=1, head_dim=6, vocab_size=V, max_position_embeddings=64,
                                       final_logit_softcapping=softcap, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return quiet(lambda: transformers.Gemma2ForCausalLM(config))


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, V, (n,), generator=torch.Generator().manual_seed(seed))


def char_tokenizer(text: str):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(sorted(set(text)))}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>")


def save_model_folder(path, model):
    model.save_pretrained(path)
    char_tokenizer(TEXT).save_pretrained(path)
    return path


# ---- the rank and the hidden-size estimate ------------------------------------------------------------


@pytest.mark.parametrize("build, bound", [(gpt2, D + 1), (gpt2_with_bias, D + 2), (llama, D + 1)])
@pytest.mark.parametrize("n_contexts", [150, 60])  # N >= V (rows streamed) and N < V (columns streamed)
def test_affine_heads_have_rank_d_plus_one_and_the_estimate_is_d(build, bound, n_contexts):
    report = probe_model(build(), tokens(200), n_contexts=n_contexts, context_length=32, stride=16, unargmaxable=False)
    log_probs = report["log_probs"]
    assert (log_probs["n_rows"], log_probs["n_cols"]) == (n_contexts, V)
    assert log_probs["rank"]["nr"] == log_probs["rank"]["numpy"] == bound == log_probs["softmax_rank_bound"]
    assert report["hidden_size_estimate"]["estimate"] == D
    assert report["head_check"]["passed"] and report["head"]["affine"]
    assert report["head"]["output_bias"] == (bound == D + 2)
    assert set(log_probs["tolerances"]) == {"nr", "numpy", "model_dtype"}


def test_a_soft_capped_head_exceeds_the_affine_bound():
    report = probe_model(gemma2(), tokens(200), n_contexts=150, context_length=32, stride=16, unargmaxable=False)
    assert report["head"]["post_processing"] and not report["head"]["affine"]
    assert report["head_check"]["passed"]  # the float64 head includes the soft-capping
    assert report["log_probs"]["rank"]["nr"] > D + 1


def test_streamed_spectra_match_dense_svd():
    """Both layouts against numpy's SVD of the dense L and of its doubly centred version."""
    model = gpt2_with_bias()
    head = float64_head(model)
    for n_rows in (140, 50):
        hidden = torch.randn(n_rows, D, dtype=torch.float64, generator=torch.Generator().manual_seed(n_rows))
        z = head.logits(hidden)
        lse = torch.logsumexp(z, dim=1)
        dense = (z - lse[:, None]).numpy()
        centred = dense - dense.mean(axis=0)
        centred -= centred.mean(axis=1, keepdims=True)
        for spill in (2**40, 0):  # in memory, and through the temporary file
            spectra = logprob_spectra(head, hidden, lse, z.mean(dim=1), z.sum(dim=0), spill_bytes=spill)
            np.testing.assert_allclose(spectra["log_probs"][: D + 2], np.linalg.svd(dense, compute_uv=False)[: D + 2], rtol=1e-10)
            np.testing.assert_allclose(spectra["double_centred"][:D], np.linalg.svd(centred, compute_uv=False)[:D], rtol=1e-10)


def test_largest_gap():
    assert largest_gap([10.0, 9.0, 8.0, 1e-12, 1e-13]) == {"index": 3, "ratio": pytest.approx(8e12)}
    assert largest_gap([5.0, 4.0, 0.0, 0.0], n_structural_zeros=1)["index"] == 2
    assert largest_gap([3.0])["index"] == 1


# ---- perplexity, windows, bits per byte ------------------------------------------------------------------


def test_sliding_windows_predict_every_token_once():
    for n_tokens, context, stride in [(100, 32, 16), (31, 32, 16), (100, 10, 9), (2, 4, 1)]:
        targets = []
        for begin, end, first in sliding_windows(n_tokens, context, stride):
            assert end - begin <= context and begin < first <= end
            targets += list(range(first, end))
        assert targets == list(range(1, n_tokens))


def test_perplexity_matches_the_models_own_loss():
    model, ids = llama(), tokens(40, seed=3)
    report = probe_model(model, ids, n_contexts=10, context_length=64, stride=32, unargmaxable=False, n_bytes=80)
    with torch.no_grad():
        loss = float(model(input_ids=ids[None], labels=ids[None]).loss)
    assert report["language_modeling"]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert report["language_modeling"]["bits_per_byte"] == pytest.approx(loss * 39 / math.log(2) / 80, rel=1e-5)


# ---- unargmaxable tokens of a model's head ---------------------------------------------------------------


def test_known_unargmaxable_tokens_of_a_model_head_are_found():
    model = gpt2(tie_word_embeddings=False)
    generator = np.random.default_rng(0)
    weight = generator.standard_normal((V, D))
    weight /= np.linalg.norm(weight, axis=1, keepdims=True)  # every row a vertex of the hull
    inside = [5, 40, 77]
    for token in inside:
        # 2 D + 1 positive weights: strictly inside the hull, so float32 rounding keeps it there
        parts = generator.choice(np.setdiff1d(np.arange(V), inside), size=2 * D + 1, replace=False)
        weight[token] = generator.dirichlet(np.ones(2 * D + 1)) @ weight[parts]
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.from_numpy(weight))
    report = probe_model(model, tokens(120), n_contexts=100, context_length=32, stride=16, n_workers=1)
    found = report["unargmaxable"]
    assert found["applicable"] and found["unargmaxable"] == inside and found["undetermined"] == []
    rounded = model.lm_head.weight.detach().double().numpy()  # what the model holds (float32)
    for certificate in found["certificates"]:
        bound = check_certificate(rounded, None, certificate["token"], certificate["competitors"], certificate["weights"], found["box"])
        assert bound <= found["margin_tolerance"]


# ---- the command, folders, failures --------------------------------------------------------------------


def test_cli_probe_on_a_local_folder_and_plot_comparison(tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    for name, build in (("gpt2", gpt2), ("llama", llama)):
        folder = save_model_folder(tmp_path / name, build())
        out = tmp_path / "probes" / name
        assert main(["probe", str(folder), "--data", str(text_file), "--n-contexts", "120", "--context-length", "32",
                     "--output-dir", str(out), "--workers", "1"]) == 0
        report = json.loads((out / "probe.json").read_text())
        assert report["model"]["loaded_from"] == "local folder" and report["model"]["weights_sha256"]
        assert report["data"]["n_bytes_predicted"] == len(TEXT.encode()) and report["data"]["prefix_token"] == 1
        assert report["language_modeling"]["bits_per_byte"] > 0 and report["provenance"]["versions"]["transformers"]
        assert report["provenance"]["command"].startswith("softmax-bench probe ")
        assert report["log_probs"]["rank"]["nr"] == D + 1 and report["hidden_size_estimate"]["estimate"] == D
        for png in ("head_spectrum.png", "logprob_spectrum.png"):
            assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "hidden-size estimate 12" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "probes")]) == 0
    table = (tmp_path / "probes" / "probe_comparison.md").read_text()
    assert "| gpt2 |" in table and "| llama |" in table
    assert (tmp_path / "probes" / "probe_logprob_spectra.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unknown_hub_id_offline_fails_fast_with_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    started = time.perf_counter()
    assert main(["probe", "no-such-user/no-such-model-xyz", "--data", str(text_file), "--output-dir", str(tmp_path / "o")]) == 2
    assert time.perf_counter() - started < 30
    error = capsys.readouterr().err.strip()
    assert "not in the local Hugging Face cache" in error and "--local-dir" in error and "\n" not in error
    assert main(["probe", str(tmp_path / "missing-folder"), "--data", str(text_file)]) == 2
    assert main(["probe", str(tmp_path), "--data", str(tmp_path / "none.txt")]) == 2


def test_without_transformers_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert main(["probe", "gpt2", "--data", str(text_file)]) == 2
    assert 'pip install -e ".[hf]"' in capsys.readouterr().err


def test_a_head_the_probe_does_not_know_is_refused():
    """A model that rescales its logits in a way the float64 head does not reproduce is an error."""
    model = llama()
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = out.logits * 2.0 + 1.0
        return out

    model.forward = forward
    with pytest.raises(UserError, match="own logits"):
        probe_model(model, tokens(50), n_contexts=20, context_length=32, stride=16, unargmaxable=False)


def test_a_matrix_too_large_for_the_machine_is_refused_before_any_work():
    from bottleneck_analysis.probe import _check_memory, working_memory_bytes

    assert working_memory_bytes(4000, 50_000, 768) == 8 * (4000**2 + 4000 * 768 + 50_000 * 768) + 4 * 64 * 2**20
    with pytest.raises(UserError, match="--n-contexts"):
        _check_memory(10**6, 256_000, 4096)
    _check_memory(1000, 512, 64)  # small: no error


def test_several_revisions_give_one_folder_each_and_a_comparison(tmp_path, monkeypatch, capsys):
    """The Hub is faked: each revision loads another tiny model (the folders and comparison are real)."""
    import bottleneck_analysis.pretrained as pretrained

    def fake_load(model, revision=None, *, dtype="auto", device="cpu"):
        built = gpt2() if revision == "step1000" else llama()
        return built, char_tokenizer(TEXT), {"id": model, "revision": revision, "commit_hash": f"hash-{revision}"}

    monkeypatch.setattr(pretrained, "load_pretrained", fake_load)
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "revisions"
    assert main(["probe", "org/model", "--revision", "step1000", "--revision", "main", "--data", str(text_file),
                 "--n-contexts", "100", "--max-tokens", "150", "--context-length", "32", "--output-dir", str(out),
                 "--no-unargmaxable"]) == 0
    for revision in ("step1000", "main"):
        report = json.loads((out / revision / "probe.json").read_text())
        assert report["model"]["revision"] == revision and report["model"]["commit_hash"] == f"hash-{revision}"
    table = (out / "probe_comparison.md").read_text()
    assert "org/model@step1000" in table and "org/model@main" in table
    assert "comparison:" in capsys.readouterr().out
