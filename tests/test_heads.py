"""Every head in ``lm.heads.HEADS``: normalization, gradients, naive formulas, limits, magnitudes,
fused loss, tying, option validation and the softmax bottleneck itself.

The tests are parametrized over the registry: a new head is covered by adding it there. Its naive
probability-space formula is its own ``reference_probs`` method, written from the paper independently of
its log-space code."""

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from lm.errors import UserError
from lm.heads import HEADS, MixtureHead, SigsoftmaxHead, SoftmaxHead, head_options
from lm.heads import functional as Fh
from lm.heads import mixture_loss
from lm.heads.mixture import locked_dropout
from lm.heads.plif import _PiecewiseLinear

torch.set_num_threads(1)

D_MODEL, VOCAB = 5, 13
MIXTURES = [name for name, cls in HEADS.items() if issubclass(cls, MixtureHead)]
DENSE = [name for name, cls in HEADS.items() if not cls.sparse]
FLAGS = ("sparse", "decoder_reads_body", "affine_log_softmax", "argmax_of_body_logits")
SMALL = {"n_components": 3, "d_latent": 4, "r": 0.4, "d_gate": 3, "n_frequent": 6}  # small sizes, for the heads
# that take these options (n_frequent < VOCAB: Mixtape's gate sharing is exercised)


def small_options(name: str, **options) -> dict:
    """``SMALL`` restricted to the options head ``name`` takes, updated with ``options``."""
    return {**{k: v for k, v in SMALL.items() if k in head_options(name)}, **options}


def make_head(name: str, d_model: int = D_MODEL, vocab_size: int = VOCAB, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    head = HEADS[name](d_model, vocab_size, **small_options(name, **options))
    with torch.no_grad():  # logits of order 1, so that every nonlinearity matters
        head.decoder.weight.normal_()
        head.decoder.bias.normal_()
    return head.double().eval()


def hidden_states(*shape: int, scale: float = 1.0, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def targets_for(hidden: torch.Tensor, vocab_size: int = VOCAB, seed: int = 2) -> torch.Tensor:
    return torch.randint(vocab_size, hidden.shape[:-1], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_declares_its_flags_and_typed_options(name: str):
    cls = HEADS[name]
    assert all(isinstance(getattr(cls, flag, None), bool) for flag in FLAGS), FLAGS
    assert not (cls.sparse and cls.affine_log_softmax), "a sparse head is no log_softmax of logits"
    assert not cls.argmax_of_body_logits or cls.decoder_reads_body
    assert callable(getattr(cls, "reference_probs", None)) and cls.__doc__ and cls.__module__.startswith("lm.heads.")
    for option, (annotation, default) in head_options(name).items():
        assert option not in HEADS and option not in ("name", "shared"), f"{option} would shadow a head block"
        assert annotation is not inspect.Parameter.empty and default is not inspect.Parameter.empty, option
    HEADS[name](D_MODEL, VOCAB)  # the defaults build


def test_flags_of_the_original_heads():
    assert [name for name in HEADS if HEADS[name].sparse] == ["r_softmax"]
    for name in ("softmax", "sigsoftmax", "r_softmax"):
        assert HEADS[name].decoder_reads_body and HEADS[name].argmax_of_body_logits
    assert [n for n in ("softmax", "sigsoftmax", "mos", "moss", "r_softmax") if HEADS[n].affine_log_softmax] == ["softmax"]
    assert not any(HEADS[n].decoder_reads_body for n in ("mos", "moss"))


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("shape", [(7,), (2, 3)])
def test_log_probs_have_the_right_shape_and_normalize(name: str, shape: tuple):
    head = make_head(name)
    log_probs = head(hidden_states(*shape, D_MODEL, scale=3.0))
    assert log_probs.shape == (*shape, VOCAB)
    torch.testing.assert_close(torch.logsumexp(log_probs, -1), torch.zeros(shape, dtype=torch.float64))
    assert not torch.isnan(log_probs).any()


@pytest.mark.parametrize("name", list(HEADS))
def test_head_equals_naive_probability_formula(name: str):
    head = make_head(name)
    g = hidden_states(9, D_MODEL, scale=2.0)
    with torch.no_grad():
        torch.testing.assert_close(head(g).exp(), head.reference_probs(g), rtol=1e-10, atol=1e-14)


@pytest.fixture
def frozen_r_softmax_threshold(monkeypatch):
    """Hold r-softmax's threshold at its value on the unperturbed input while finite differences run.

    The paper detaches ``t_r``; a finite difference through the quantile would not, so gradcheck
    compares against the function with the threshold the paper treats as a constant.
    """
    cache: dict[tuple, torch.Tensor] = {}
    original = Fh.r_softmax_threshold

    def frozen(z, r):
        key = (tuple(z.shape), float(r))
        if key not in cache:
            cache[key] = original(z, r)
        return cache[key]

    monkeypatch.setattr(Fh, "r_softmax_threshold", frozen)


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("path", ["forward", "loss"])
def test_gradcheck_float64_wrt_hidden_and_parameters(name: str, path: str, frozen_r_softmax_threshold):
    head = make_head(name, d_model=3, vocab_size=7)
    names = [n for n, _ in head.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in head.named_parameters())
    g = hidden_states(4, 3, scale=1.5).requires_grad_()
    targets = targets_for(g, vocab_size=7)

    def function(hidden, *values):
        state = dict(zip(names, values))
        if path == "loss":
            return _loss_via(head, state, hidden, targets)
        return functional_call(head, state, (hidden,), strict=True).exp()  # exp: r-softmax has -inf

    assert torch.autograd.gradcheck(function, (g, *params))


def _loss_via(head: nn.Module, state: dict, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``head.loss`` evaluated with the parameters in ``state``."""

    class Loss(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head.loss(x, targets)

    return functional_call(Loss(), {f"head.{k}": v for k, v in state.items()}, (hidden,), strict=True)


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_is_the_nll_of_the_log_probs(name: str, reduction: str):
    head = make_head(name)
    g = hidden_states(2, 3, D_MODEL)
    targets = targets_for(g)
    log_probs = Fh.log_smoothed(head(g), head.smoothing)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = {"none": nll, "mean": nll.mean(), "sum": nll.sum()}[reduction]
    loss = head.loss(g, targets, reduction=reduction)
    assert loss.shape == expected.shape
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", list(HEADS))
def test_float32_inputs_of_magnitude_1e4_give_finite_log_probs_and_gradients(name: str):
    head = make_head(name).float().train()
    g = hidden_states(2, 4, D_MODEL, scale=1e4, dtype=torch.float32).requires_grad_()
    targets = targets_for(g)
    log_probs = head(g)
    assert not torch.isnan(log_probs).any() and not torch.isposinf(log_probs).any()
    assert torch.isfinite(log_probs.max(-1).values).all()
    loss = head.loss(g, targets, reduction="mean")
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(g.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_mixture_with_one_component_equals_softmax_on_the_latent():
    mos = make_head("mos", n_components=1)
    g = hidden_states(6, D_MODEL)
    latent = torch.tanh(mos.latent(g))  # tanh(W_1 g + c_1), (6, d_latent)
    softmax = SoftmaxHead(mos.d_latent, VOCAB).double()
    softmax.decoder.load_state_dict(mos.decoder.state_dict())
    torch.testing.assert_close(mos(g), softmax(latent))
    torch.testing.assert_close(mos.loss(g, targets_for(g)), softmax.loss(latent, targets_for(g)))


def test_sigsoftmax_mixture_with_one_component_equals_sigsoftmax_on_the_latent():
    moss = make_head("moss", n_components=1)
    g = hidden_states(6, D_MODEL)
    latent = torch.tanh(moss.latent(g))
    sigsoftmax = SigsoftmaxHead(moss.d_latent, VOCAB).double()
    sigsoftmax.decoder.load_state_dict(moss.decoder.state_dict())
    torch.testing.assert_close(moss(g), sigsoftmax(latent))
    torch.testing.assert_close(moss.loss(g, targets_for(g)), sigsoftmax.loss(latent, targets_for(g)))


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("upstream", ["mean", "sum", "weighted"])
@pytest.mark.parametrize("tokens_per_chunk", [1, 4, 1000])
def test_fused_loss_equals_plain_loss_and_gradients(name, upstream, tokens_per_chunk, monkeypatch):
    """``head.loss`` (fused and chunked where the head has such a path) against ``-head(x)[target]``, in
    training mode with dropout on: the same seed gives the same masks."""
    n_components = SMALL["n_components"] if "n_components" in head_options(name) else 1
    monkeypatch.setattr(mixture_loss, "CHUNK_ELEMENTS", n_components * VOCAB * tokens_per_chunk)
    options = {k: 0.3 for k in head_options(name) if k.startswith("dropout")}
    head = make_head(name, **options).train()
    g = hidden_states(3, 5, D_MODEL, scale=2.0)
    targets = targets_for(g)
    weights = {"mean": torch.full((3, 5), 1 / 15), "sum": torch.ones(3, 5)}.get(upstream)
    if weights is None:
        weights = torch.rand(3, 5, generator=torch.Generator().manual_seed(3))
    weights = weights.double()

    def gradients(loss_fn):
        head.zero_grad()
        x = g.clone().requires_grad_()
        torch.manual_seed(7)
        loss = (loss_fn(x) * weights).sum()
        loss.backward()
        return loss, x.grad, [p.grad.clone() for p in head.parameters()]

    fused = gradients(lambda x: head.loss(x, targets))
    plain = gradients(lambda x: -head(x).gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(fused[0], plain[0])
    torch.testing.assert_close(fused[1], plain[1])
    for fused_grad, plain_grad in zip(fused[2], plain[2]):
        torch.testing.assert_close(fused_grad, plain_grad)


@pytest.mark.parametrize("name", MIXTURES)
def test_fused_mixture_nll_gradcheck_with_several_chunks(name: str, monkeypatch):
    monkeypatch.setattr(mixture_loss, "CHUNK_ELEMENTS", 2 * 3 * 7)  # two tokens per chunk
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(5, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    log_prior = torch.log_softmax(torch.randn(5, 3, generator=generator, dtype=torch.float64), -1)
    log_prior.requires_grad_()
    weight = torch.randn(7, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(7, (5,), generator=generator)
    component = HEADS[name].component_name
    for reduce in (lambda nll: nll, torch.sum):  # per-token upstream gradients, then uniform ones
        assert torch.autograd.gradcheck(
            lambda *x: reduce(mixture_loss.fused_mixture_nll(*x, targets, component)),
            (latent, log_prior, weight, bias),
        )


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_forward_without_autograd_is_chunked_and_equal(name: str, monkeypatch):
    head = make_head(name)
    g = hidden_states(2, 7, D_MODEL)
    expected = head(g)
    monkeypatch.setattr(mixture_loss, "CHUNK_ELEMENTS", 3 * VOCAB * 3)
    with torch.no_grad():
        torch.testing.assert_close(head(g), expected)


def test_latent_dropout_is_locked_over_time():
    torch.manual_seed(0)
    x = torch.ones(4, 6, 50, dtype=torch.float64)
    dropped = locked_dropout(x, 0.5, training=True)
    assert (dropped == dropped[:, :1]).all()  # same mask at every time step
    assert ((dropped == 0) | (dropped == 2.0)).all()
    assert 0.2 < (dropped == 0).double().mean() < 0.8
    assert locked_dropout(x, 0.5, training=False) is x


@pytest.mark.parametrize("name", list(HEADS))
def test_tied_decoder_shares_storage_and_gradients(name: str):
    embedding = nn.Embedding(VOCAB, 4)
    d_model = 4 if HEADS[name].decoder_reads_body else D_MODEL
    options = {k: v for k, v in small_options(name).items() if k != "d_latent"}
    head = HEADS[name](d_model, VOCAB, tied_embedding=embedding, **options)
    assert head.decoder.weight is embedding.weight
    assert head.decoder.weight.data_ptr() == embedding.weight.data_ptr()
    g = hidden_states(3, d_model, dtype=torch.float32)
    head.loss(g, targets_for(g), reduction="sum").backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", [n for n in HEADS if HEADS[n].decoder_reads_body])
def test_tied_head_needs_the_embedding_size(name: str):
    with pytest.raises(UserError, match="embedding size"):
        HEADS[name](D_MODEL, VOCAB, tied_embedding=nn.Embedding(VOCAB, D_MODEL + 1))


@pytest.mark.parametrize("name", MIXTURES)
def test_tied_mixture_defaults_its_latent_to_the_embedding_size(name: str):
    head = HEADS[name](D_MODEL, VOCAB, tied_embedding=nn.Embedding(VOCAB, 7), n_components=2)
    assert head.d_latent == 7
    with pytest.raises(UserError, match="embedding size"):
        HEADS[name](D_MODEL, VOCAB, tied_embedding=nn.Embedding(VOCAB, 7), d_latent=6)


@pytest.mark.parametrize(
    "name, options",
    [
        ("softmax", {"d_model": 0}),
        ("sigsoftmax", {"vocab_size": -3}),
        ("mos", {"n_components": 0}),
        ("moss", {"d_latent": 0}),
        ("mos", {"dropout_latent": 1.0}),
        ("moss", {"dropout_latent": -0.1}),
        ("r_softmax", {"r": 1.5}),
        ("r_softmax", {"r": -0.01}),
        ("r_softmax", {"smoothing": 0.0}),
        ("r_softmax", {"smoothing": 1.0}),
    ],
)
def test_bad_options_raise_user_error(name: str, options: dict):
    sizes = {"d_model": D_MODEL, "vocab_size": VOCAB}
    sizes.update({k: options.pop(k) for k in list(options) if k in sizes})
    with pytest.raises(UserError):
        HEADS[name](sizes["d_model"], sizes["vocab_size"], **options)


@pytest.mark.parametrize("name", list(HEADS))
def test_bad_reduction_and_target_shape_raise_user_error(name: str):
    head = make_head(name)
    g = hidden_states(2, 3, D_MODEL)
    with pytest.raises(UserError):
        head.loss(g, targets_for(g), reduction="average")
    with pytest.raises(UserError):
        head.loss(g, targets_for(g).view(-1))


@pytest.mark.parametrize("name", [n for n in HEADS if HEADS[n].argmax_of_body_logits])
def test_argmax_of_body_logits_heads_share_the_argmax_of_their_logits(name: str):
    head = make_head(name)
    g = hidden_states(50, D_MODEL, scale=2.0)
    assert (head(g).argmax(-1) == head.decoder(g).argmax(-1)).all()


@pytest.mark.parametrize("r", [0.0, 0.3, 0.8])
def test_r_softmax_head_sparsity_and_zero_target_policy(r: float):
    vocab_size = 400
    head = make_head("r_softmax", vocab_size=vocab_size, r=r, smoothing=1e-4)
    g = hidden_states(6, D_MODEL)
    log_probs = head(g)
    zero_fraction = torch.isinf(log_probs).double().mean().item()
    assert abs(zero_fraction - r) <= 1.0 / vocab_size
    if r > 0:
        targets = torch.isinf(log_probs).double().argmax(-1)  # a zero-probability target per row
        expected = torch.full((6,), math.log(vocab_size / 1e-4), dtype=torch.float64)
        torch.testing.assert_close(head.loss(g, targets), expected, rtol=1e-9, atol=0)


def rank_contradiction(head: nn.Module, d_model: int, n_contexts: int = 80, seed: int = 3) -> str | None:
    """Why the rank of ``head``'s log-prob matrix on random weights contradicts its declared bound, or None.

    Yang et al. 2018: ``log p = log_softmax(W x + b)`` gives an ``N x V`` matrix of rank at most ``d + 2``
    (``d + 1`` plus the bias) with ``d`` the decoder's input size; a head that is not of that form should
    exceed it. Every parameter is drawn at random (scale 1), so that every nonlinearity matters; sparse
    heads are measured on their smoothed distribution (no ``-inf``).
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_()
        log_probs = Fh.log_smoothed(head(hidden_states(n_contexts, d_model, scale=2.0, seed=seed)), head.smoothing)
    d = head.decoder.in_features
    rank = int(np.linalg.matrix_rank(log_probs.numpy()))  # (N, V), float64
    if type(head).affine_log_softmax and rank > d + 2:
        return f"{type(head).__name__} declares affine_log_softmax but its rank {rank} exceeds d + 2 = {d + 2}"
    if not type(head).affine_log_softmax and rank <= d + 2:
        return f"{type(head).__name__} declares no rank bound but its rank {rank} stays within d + 2 = {d + 2}"
    return None


@pytest.mark.parametrize("name", list(HEADS))
def test_rank_of_log_prob_matrix_agrees_with_the_declared_bound(name: str):
    d, vocab_size = 4, 40
    head = make_head(name, d_model=d, vocab_size=vocab_size, **({"d_latent": d} if "d_latent" in head_options(name) else {}))
    assert rank_contradiction(head, d) is None


def test_rank_check_catches_a_head_that_declares_the_wrong_bound():
    class ClaimsBound(SigsoftmaxHead):
        affine_log_softmax = True

    class ClaimsNoBound(SoftmaxHead):
        affine_log_softmax = False

    assert "exceeds" in rank_contradiction(ClaimsBound(4, 40).double(), 4)
    assert "stays within" in rank_contradiction(ClaimsNoBound(4, 40).double(), 4)


def test_mixture_of_contexts_stays_within_d_plus_2_where_mos_with_the_same_weights_exceeds_it():
    """Yang et al. 2018, section 2.5: mixing the contexts before the softmax keeps the bottleneck."""
    d, vocab_size = 4, 40
    mos = make_head("mos", d_model=d, vocab_size=vocab_size, d_latent=d, n_components=5)
    moc = HEADS["moc"](d, vocab_size, d_latent=d, n_components=5).double().eval()
    moc.load_state_dict(mos.state_dict())  # the same prior, latents and decoder
    g = hidden_states(80, d, scale=2.0)
    with torch.no_grad():
        rank_moc = np.linalg.matrix_rank(moc(g).numpy())
        rank_mos = np.linalg.matrix_rank(mos(g).numpy())
    assert rank_moc <= d + 2 < rank_mos


def test_generalized_sigsoftmax_is_sigsoftmax_at_k_2_c_0_and_softmax_at_k_1():
    g = hidden_states(7, D_MODEL, scale=3.0)
    sigsoftmax, softmax = make_head("sigsoftmax"), make_head("softmax")
    for (k, c), reference in (((2.0, 0.0), sigsoftmax), ((1.0, 0.7), softmax)):
        gss = HEADS["gss"](D_MODEL, VOCAB, k=k, c=c).double().eval()
        gss.decoder.load_state_dict(reference.decoder.state_dict())
        torch.testing.assert_close(gss(g), reference(g), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gss.loss(g, targets_for(g)), reference.loss(g, targets_for(g)))
    with pytest.raises(UserError, match="k must be a positive"):
        HEADS["gss"](D_MODEL, VOCAB, k=0.0)


def test_plif_starts_as_softmax_stays_increasing_and_is_deterministic_for_a_seed():
    g = hidden_states(4, 6, D_MODEL, scale=3.0)
    plif, softmax = make_head("plif", n_pieces=7, range=2.0), make_head("softmax")
    plif.decoder.load_state_dict(softmax.decoder.state_dict())
    torch.testing.assert_close(plif(g), softmax(g), rtol=1e-6, atol=1e-6)  # f(z) = z + T (float32 theta)
    with torch.no_grad():
        plif.theta.normal_(generator=torch.Generator().manual_seed(5))
        z = torch.linspace(-5.0, 5.0, 2001, dtype=torch.float64)
        values = _PiecewiseLinear.apply(z, plif.slopes(), plif.half_range)  # f on a grid, (2001,)
    assert (values.diff() > 0).all()  # strictly increasing, inside and outside [-T, T]

    def one_run() -> list[torch.Tensor]:
        torch.manual_seed(11)
        head = HEADS["plif"](D_MODEL, VOCAB, n_pieces=9, range=3.0)
        with torch.no_grad():
            head.theta.normal_()
        x = hidden_states(5, 8, D_MODEL, scale=4.0, dtype=torch.float32).requires_grad_()
        head.loss(x, targets_for(x), reduction="mean").backward()
        return [x.grad, *(p.grad for p in head.parameters())]

    for first, second in zip(one_run(), one_run()):
        assert torch.equal(first, second)


def test_mixtape_sigmoid_tree_gate_sharing_and_one_component():
    head = make_head("mixtape", n_components=4, n_frequent=6)
    g = hidden_states(5, D_MODEL, scale=2.0)
    with torch.no_grad():
        head.gate_bias.normal_()
        frequent, shared = head.pre_activations(g)  # (5, 3, 6), (5, 3)
        s = torch.sigmoid(frequent)
        paper = torch.stack([s[:, 0] * s[:, 1], s[:, 0] * (1 - s[:, 1]), (1 - s[:, 0]) * s[:, 2], (1 - s[:, 0]) * (1 - s[:, 2])], 1)
        torch.testing.assert_close(head.log_priors(frequent).exp(), paper)  # the K = 4 tree of the paper
        for k in (2, 3, 5, 8):  # any K: priors are a distribution over the K leaves
            priors = HEADS["mixtape"](D_MODEL, VOCAB, n_components=k).double().log_priors(torch.randn(4, k - 1, 7, dtype=torch.float64))
            torch.testing.assert_close(priors.exp().sum(-2), torch.ones(4, 7, dtype=torch.float64))
        # infrequent tokens (ids >= 6): the same priors, so their scores are affine in sum_k pi_k h_k
        shared_priors = head.log_priors(shared.unsqueeze(-1)).exp()  # (5, 4, 1)
        context = (shared_priors * head.latents(g)).sum(-2)
        torch.testing.assert_close(head.scores(g)[:, 6:], head.decoder(context)[:, 6:])
    one = make_head("mixtape", n_components=1)
    softmax = SoftmaxHead(one.d_latent, VOCAB).double()
    softmax.decoder.load_state_dict(one.decoder.state_dict())
    torch.testing.assert_close(one(g), softmax(torch.tanh(one.latent(g))))


@pytest.mark.parametrize("bincount", [True, False])
def test_plif_slope_gradient_by_bincount_and_by_one_hot_chunks(bincount: bool, monkeypatch):
    from lm.heads import plif

    monkeypatch.setattr(plif, "BINCOUNT_DEVICES", ("cpu",) if bincount else ())
    monkeypatch.setattr(plif, "CHUNK_ELEMENTS", 4 * 5)  # the one-hot path: several chunks of 4 logits
    z = hidden_states(3, 7, scale=3.0).requires_grad_()
    slopes = (torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, a: plif._PiecewiseLinear.apply(z, a, 2.0), (z, slopes))
