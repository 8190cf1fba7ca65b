"""Two-layer softmax / exp / ReLU networks, their NTK, gradient descent and the experiment command."""

import json
import math

import pytest
import torch

from bottleneck_analysis import cli_two_layer
from bottleneck_analysis.two_layer import NETWORKS, get_network, init_parameters, network_output, sphere_points
from bottleneck_analysis.two_layer_experiments import (
    ConcentrationConfig, RegressionDataConfig, fit_power_law, geometric_widths, make_regression_data, run_concentration,
    smallest_width_reaching,
)
from bottleneck_analysis.two_layer_gd import GradientDescentConfig, train_first_layer
from bottleneck_analysis.two_layer_ntk import (
    limit_ntk, ntk_extreme_eigenvalues, ntk_gram, ntk_gram_from_jacobian,
)
from lm.errors import UserError

NAMES = list(NETWORKS)


def _setup(seed: int, n_points: int, input_dim: int, width: int, output_dim: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = sphere_points(n_points, input_dim, generator)
    weights, signs = init_parameters(input_dim, width, output_dim, 1.0, generator)
    return inputs, weights, signs


def _naive_output(name: str, weights: torch.Tensor, inputs: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(TL-1) with Python loops and the math module, float64."""
    width = weights.shape[1]
    outputs = torch.zeros(inputs.shape[0], signs.shape[1], dtype=torch.float64)
    for i in range(inputs.shape[0]):
        pre = [float(inputs[i] @ weights[:, r]) for r in range(width)]
        if name == "softmax":
            exps = [math.exp(z) for z in pre]
            hidden, scale = [e / sum(exps) for e in exps], width
        elif name == "exp":
            hidden, scale = [math.exp(z) for z in pre], 1.0
        else:
            hidden, scale = [max(z, 0.0) for z in pre], 1 / math.sqrt(width)
        for l in range(signs.shape[1]):
            outputs[i, l] = scale * sum(float(signs[r, l]) * hidden[r] for r in range(width))
    return outputs


def _naive_gram(name: str, weights: torch.Tensor, inputs: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(NTK-1) as inner products of autograd gradients, one (example, output) at a time."""
    network, rows = get_network(name), []
    for i in range(inputs.shape[0]):
        for l in range(signs.shape[1]):
            leaf = weights.clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(network_output(network, leaf, inputs[i:i + 1], signs)[0, l], leaf)
            rows.append(gradient.flatten())
    jacobian = torch.stack(rows)
    return jacobian @ jacobian.T


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("output_dim", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_output_matches_naive_formula(name, output_dim, seed):
    inputs, weights, signs = _setup(seed, 5, 3, 7, output_dim)
    fast = network_output(NETWORKS[name], weights, inputs, signs)
    assert fast.shape == (5, output_dim)
    torch.testing.assert_close(fast, _naive_output(name, weights, inputs, signs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("output_dim", [1, 2])
@pytest.mark.parametrize("seed", [0, 3])
def test_ntk_gram_matches_autograd_loop(name, output_dim, seed):
    inputs, weights, signs = _setup(seed, 4, 3, 6, output_dim)
    naive = _naive_gram(name, weights, inputs, signs)
    torch.testing.assert_close(ntk_gram(NETWORKS[name], weights, inputs, signs), naive, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ntk_gram_from_jacobian(NETWORKS[name], weights, inputs, signs), naive, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 4, 2, 1), (12, 2, 3, 2)])  # (n, d, m, k): n k <= d m, then n k > d m
def test_extreme_eigenvalues_from_either_side(name, shape):
    n_points, input_dim, width, output_dim = shape
    inputs, weights, signs = _setup(0, n_points, input_dim, width, output_dim)
    eigenvalues = torch.linalg.eigvalsh(ntk_gram(NETWORKS[name], weights, inputs, signs))
    smallest, largest = ntk_extreme_eigenvalues(NETWORKS[name], weights, inputs, signs)
    assert largest == pytest.approx(float(eigenvalues[-1]), rel=1e-10)
    if n_points * output_dim > input_dim * width:
        assert smallest == 0.0 and abs(float(eigenvalues[0])) < 1e-9 * largest
    else:
        assert smallest == pytest.approx(float(eigenvalues[0]), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shift_scale", [0.5, 30.0])
def test_softmax_network_ignores_a_common_shift_of_all_units(seed, shift_scale):
    """(TL-3): F(W + v 1^T, x) = F(W, x); hence grad_W F has zero row sums."""
    inputs, weights, signs = _setup(seed, 6, 4, 9, 2)
    network = NETWORKS["softmax"]
    shift = shift_scale * torch.randn(4, 1, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    torch.testing.assert_close(network_output(network, weights + shift, inputs, signs),
                               network_output(network, weights, inputs, signs), rtol=1e-10, atol=1e-10)
    leaf = weights.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(network_output(network, leaf, inputs, signs).sum(), leaf)
    assert gradient.abs().max() > 1e-3
    torch.testing.assert_close(gradient.sum(dim=1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    # The exponential network has no such invariance.
    exp_shifted = network_output(NETWORKS["exp"], weights + shift, inputs, signs)
    assert not torch.allclose(exp_shifted, network_output(NETWORKS["exp"], weights, inputs, signs))


def test_gradient_descent_keeps_the_mean_column_of_softmax_weights():
    inputs, weights, signs = _setup(4, 5, 3, 16, 1)
    targets = torch.randn(5, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    trained, _ = train_first_layer(NETWORKS["softmax"], weights, signs, inputs, targets,
                                   GradientDescentConfig(iterations=30, ntk_checkpoints=0))
    assert (trained - weights).abs().max() > 1e-3
    torch.testing.assert_close(trained.mean(dim=1), weights.mean(dim=1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_network_is_exp_network_over_mean_hidden_unit(seed):
    """(TL-2): F_softmax = F_exp / ((1/m) <exp(W^T x), 1_m>)."""
    inputs, weights, signs = _setup(seed, 5, 3, 11, 2)
    mean_unit = torch.exp(inputs @ weights).mean(dim=1, keepdim=True)  # (n, 1)
    torch.testing.assert_close(network_output(NETWORKS["softmax"], weights, inputs, signs),
                               network_output(NETWORKS["exp"], weights, inputs, signs) / mean_unit, rtol=1e-12, atol=1e-12)


def test_softmax_network_is_finite_at_large_pre_activations():
    inputs, weights, signs = _setup(0, 4, 3, 8, 1)
    large = network_output(NETWORKS["softmax"], 400.0 * weights, inputs, signs)
    assert torch.isfinite(large).all()
    assert large.abs().max() <= 8.0 + 1e-9  # |m <a, softmax>| <= m since |a_r| = 1
    gram = ntk_gram(NETWORKS["softmax"], 400.0 * weights, inputs, signs)
    assert torch.isfinite(gram).all()


@pytest.mark.parametrize("name, tolerance", [("relu", 0.05), ("exp", 0.15), ("softmax", 0.15)])
def test_wide_ntk_approaches_its_infinite_width_limit(name, tolerance):
    """H(0) / s(m) at m = 2^15 against (NTK-3), (NTK-4) and the ReLU arc-cosine kernel."""
    inputs, weights, signs = _setup(5, 4, 6, 2**15, 1)
    network = NETWORKS[name]
    empirical = ntk_gram(network, weights, inputs, signs) / network.ntk_scale(2**15)
    limit = limit_ntk(name, inputs, 1.0)
    relative = torch.linalg.matrix_norm(empirical - limit, ord=2) / torch.linalg.matrix_norm(limit, ord=2)
    assert relative < tolerance
    # The softmax limit is the exp limit over e^{(||x_i||^2 + ||x_j||^2) / 2} = e on the unit sphere.
    if name == "softmax":
        torch.testing.assert_close(limit * math.e, limit_ntk("exp", inputs, 1.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_descent_decreases_the_loss_at_large_width(name):
    inputs, weights, signs = _setup(2, 6, 4, 512, 1)
    targets = torch.randn(6, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    config = GradientDescentConfig(iterations=60, record_every=1, ntk_checkpoints=2)
    _, record = train_first_layer(NETWORKS[name], weights, signs, inputs, targets, config)
    losses = torch.tensor(record.relative_loss)
    assert losses[-1] < 1e-3 * losses[0]
    assert bool((losses[1:] <= losses[:-1] * (1 + 1e-9)).all()), "loss must fall at every step"
    assert record.lambda_min_init > 0 and record.lambda_max_init >= record.lambda_min_init
    assert record.ntk_steps == [30, 60] and all(math.isfinite(c) for c in record.ntk_change)
    assert 0 < record.weight_change < 1


def test_gradient_descent_stops_at_the_requested_loss():
    inputs, weights, signs = _setup(0, 4, 4, 64, 1)
    targets = torch.ones(4, 1, dtype=torch.float64)
    config = GradientDescentConfig(iterations=500, record_every=100, ntk_checkpoints=0, stop_at_loss=1e-2)
    _, record = train_first_layer(NETWORKS["relu"], weights, signs, inputs, targets, config)
    assert record.reached_loss_at is not None and record.reached_loss_at < 500
    assert record.steps[-1] == record.reached_loss_at and record.relative_loss[-1] <= 1e-2


def test_gradient_descent_records_divergence_instead_of_failing():
    """One exponential unit asked for a huge output: its NTK explodes and the step 1.9 / lambda_max(H(0)) overshoots."""
    inputs, weights, signs = _setup(0, 2, 3, 1, 1)
    targets = 1e3 * signs.sum().sign() * torch.ones(2, 1, dtype=torch.float64)
    config = GradientDescentConfig(iterations=200, step_scale=1.9, record_every=1, ntk_checkpoints=0)
    _, record = train_first_layer(NETWORKS["exp"], weights, signs, inputs, targets, config)
    assert record.diverged_at is not None and record.diverged_at < 200
    assert not math.isfinite(record.relative_loss[-1]) and math.isnan(record.lambda_min_final)


def test_smallest_width_walks_the_grid_upwards():
    data = RegressionDataConfig(input_dim=8, target="random")
    inputs, targets = make_regression_data(10, data, seed=0)
    config = GradientDescentConfig(iterations=300, record_every=300, ntk_checkpoints=0, stop_at_loss=1e-3)
    found = smallest_width_reaching("relu", inputs, targets, (1, 2, 4, 8, 16, 32, 64), 0, 1.0, config)
    assert found["width_needed"] is not None and found["width_needed"] > 1  # one unit cannot fit 10 random labels
    assert [m for m, _ in found["tried"]][-1] == found["width_needed"]
    assert all(loss > 1e-3 for _, loss in found["tried"][:-1]) and found["tried"][-1][1] <= 1e-3


def test_concentration_error_falls_with_width_and_gives_a_crossing_width():
    config = ConcentrationConfig(n_values=(4, 8), widths=(16, 256, 4096), networks=("relu", "softmax"), seeds=(0,),
                                 fit_from_width=256, data=RegressionDataConfig(input_dim=6))
    payload = run_concentration(config)
    assert len(payload["runs"]) == 4
    for run in payload["runs"]:
        errors = run["relative_errors"]
        assert errors[-1] < errors[0]
        assert run["fitted_width"] == pytest.approx((run["error_constant"] / 0.25) ** 2)
        assert run["fitted_width"] > 16
    assert {fit["network"] for fit in payload["fits"]} == {"relu", "softmax"}


def test_data_are_on_the_sphere_and_the_target_is_shared_across_n():
    data = RegressionDataConfig(input_dim=5)
    small, _ = make_regression_data(4, data, seed=1)
    inputs, targets = make_regression_data(9, data, seed=1)
    torch.testing.assert_close(inputs.norm(dim=1), torch.ones(9, dtype=torch.float64))
    assert targets.shape == (9, 1) and targets.std() > 0.1
    assert not torch.allclose(small, inputs[:4])  # point sets differ with n, the target function does not
    again, again_targets = make_regression_data(9, data, seed=1)
    torch.testing.assert_close(again_targets, targets)


@pytest.mark.parametrize("smallest, largest, factor", [(1, 64, math.sqrt(2)), (3, 100, 2.0)])
def test_geometric_widths(smallest, largest, factor):
    widths = geometric_widths(smallest, largest, factor)
    assert widths[0] == smallest and widths[-1] <= largest
    assert all(b > a for a, b in zip(widths, widths[1:]))
    assert widths[-1] * factor > largest * 0.99


@pytest.mark.parametrize("slope", [-0.5, 1.0, 2.0])
def test_fit_power_law_recovers_an_exact_power(slope):
    xs = [8.0, 16.0, 32.0, 64.0]
    fit = fit_power_law(xs, [3.0 * x**slope for x in xs])
    assert fit["slope"] == pytest.approx(slope, abs=1e-10) and fit["prefactor"] == pytest.approx(3.0, rel=1e-9)


def test_bad_input_raises_user_error():
    with pytest.raises(UserError):
        get_network("tanh")
    with pytest.raises(UserError):
        GradientDescentConfig(step_scale=2.5)
    with pytest.raises(UserError):
        RegressionDataConfig(target="noisy")
    with pytest.raises(UserError):
        geometric_widths(4, 2, 2.0)


def test_cli_quick_run_writes_json_plots_and_summary(tmp_path, capsys):
    status = cli_two_layer.main(["--quick", "--out", str(tmp_path), "--experiments", "curves", "width", "concentration",
                                 "--n-values", "4", "8", "--max-width", "16", "--curve-widths", "4", "8"])
    assert status == 0
    payload = json.loads((tmp_path / "width_needed.json").read_text())
    assert payload["provenance"]["command"].startswith("softmax-bench two-layer --experiments curves width")
    assert {"torch_version", "date_utc", "wall_seconds", "cpu_seconds", "git_commit"} <= set(payload["provenance"])
    assert len(payload["runs"]) == 2 * 3 * 2  # targets x networks x n values, one seed
    for png in ("loss_curves.png", "ntk_diagnostics.png", "width_needed.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Width needed" in (tmp_path / "summary.md").read_text()
    assert "two-layer width" in capsys.readouterr().out


def test_cli_turns_bad_options_into_status_2(tmp_path, capsys):
    assert cli_two_layer.main(["--quick", "--out", str(tmp_path), "--threshold", "2", "--experiments", "width"]) == 2
    assert "threshold" in capsys.readouterr().err
