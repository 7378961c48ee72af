"""The mathematics of the flow: each test checks one identity the model must satisfy."""

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.linalg import expm
from scipy.stats import multivariate_normal

from skflow import FFJORDDensity
from skflow.cnf.divergence import exact_divergence, hutchinson_divergence, sample_noise
from skflow.cnf.evaluation import Evaluator
from skflow.cnf.flow import CNFBlock, ContinuousFlow
from skflow.cnf.objectives import marginal_velocity
from skflow.cnf.solver import FIXED_GRID_METHODS, SolverConfig, integrate, solve_per_row
from skflow.preprocessing import InputMap


def random_flow(n_features, hidden_dims=(16, 16), n_blocks=1, seed=0, scale=0.5):
    """A float64 flow whose last layers are random (not the identity start)."""
    torch.manual_seed(seed)
    flow = ContinuousFlow(n_features, hidden_dims, "tanh", n_blocks=n_blocks).double()
    for block in flow.blocks:
        for p in block.net.layers[-1].parameters():
            torch.nn.init.normal_(p, std=scale)
    return flow


def standardization(shift, scale):
    """The input map ``(x - shift) / scale``, set by hand."""
    input_map = InputMap("standardize")
    input_map.kind_, input_map.quantile_, input_map.whitening_ = "standardize", None, None
    input_map.shift_, input_map.scale_ = np.asarray(shift), np.asarray(scale)
    return input_map


def exact_log_density(flow, input_map, x, tol):
    """log p(x) through the input map and the float64 evaluator."""
    Z, log_det = input_map.forward(x)
    return Evaluator(flow, tol, tol, dtype=torch.float64).log_prob(Z) + log_det


def linear_flow(W, b):
    """A one-block flow with dynamics exactly f(z, t) = W z + b (no hidden layer, gate = 1)."""
    d = len(b)
    flow = ContinuousFlow(d, (), n_blocks=1).double()
    layer = flow.blocks[0].net.layers[0]
    with torch.no_grad():
        layer.linear.weight.copy_(torch.as_tensor(W))
        layer.linear.bias.copy_(torch.as_tensor(b))
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(60.0)  # sigmoid(60) == 1.0 in float64
        layer.shift.weight.zero_()
    return flow


def test_exact_divergence_matches_autograd_jacobian():
    flow = random_flow(4)
    z = torch.randn(7, 4, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    velocity_fn = flow.blocks[0].velocity
    _, div, jac_sq = exact_divergence(velocity_fn, t, z, create_graph=False)
    jac = torch.autograd.functional.jacobian(lambda x: velocity_fn(t, x).sum(0), z)  # (4, 7, 4)
    np.testing.assert_allclose(div, torch.einsum("ibi->b", jac), atol=1e-12)
    np.testing.assert_allclose(jac_sq, jac.pow(2).sum((0, 2)), atol=1e-12)


@pytest.mark.parametrize("activation", ["silu", "softplus", "tanh", "elu", "swish"])
@pytest.mark.parametrize("hidden_dims", [(), (6,), (5, 7), (5, 7, 3), (4, 5, 6, 3)])
def test_frozen_block_trace_matches_autograd_jacobian(activation, hidden_dims):
    # The evaluation path's trace (tangents and cotangents met in the middle, no autograd)
    # against the full Jacobian from autograd, with per-row times as the evaluation solver
    # passes them; 0 to 4 hidden layers cover every branch of the frozen block.
    torch.manual_seed(0)
    block = CNFBlock(4, hidden_dims, activation, time_length=1.7, train_time_length=False)
    block = block.double()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, 0.7)
    z = 1.5 * torch.randn(9, 4, dtype=torch.float64)
    s = torch.rand(9, 1, dtype=torch.float64)
    frozen = block.frozen()
    velocity, div = frozen.velocity_and_divergence(s, z)
    jac = torch.autograd.functional.jacobian(lambda x: block.velocity(s, x).sum(0), z)
    np.testing.assert_allclose(velocity, block.velocity(s, z).detach(), atol=1e-12)
    np.testing.assert_allclose(frozen.velocity(s, z), velocity, atol=1e-12)
    np.testing.assert_allclose(div, torch.einsum("ibi->b", jac), atol=1e-12)
    assert not velocity.requires_grad and not div.requires_grad


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(kind):
    flow = random_flow(3, scale=1.0)
    z = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    _, exact, exact_jac_sq = exact_divergence(flow.blocks[0].velocity, t, z, create_graph=False)
    generator = torch.Generator().manual_seed(0)
    n = 4000
    z_rep = z.repeat(n, 1)  # n independent probes per row in one call
    noise = sample_noise(z_rep.shape, kind, generator, dtype=torch.float64)
    _, est, est_jac_sq = hutchinson_divergence(flow.blocks[0].velocity, t, z_rep, noise, False)
    est = est.view(n, 4)
    std_error = est.std(0) / np.sqrt(n)
    assert (std_error > 0).all()
    assert ((est.mean(0) - exact).abs() < 5 * std_error).all()
    jac_sq = est_jac_sq.view(n, 4)
    assert ((jac_sq.mean(0) - exact_jac_sq).abs() < 5 * jac_sq.std(0) / np.sqrt(n)).all()


def test_zero_dynamics_gives_the_gaussian_of_the_standardization():
    flow = ContinuousFlow(3, (8,)).double()  # fresh flows start as the identity
    shift, scale = np.array([100.0, -3.0, 0.0]), np.array([1e4, 0.5, 2.0])
    x = np.random.RandomState(0).normal(shift, scale, size=(20, 3))
    log_prob = exact_log_density(flow, standardization(shift, scale), x, 1e-8)
    expected = multivariate_normal(shift, np.diag(scale ** 2)).logpdf(x)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-10)


def test_linear_dynamics_match_the_closed_form_density():
    rng = np.random.RandomState(1)
    d = 3
    W, b = 0.4 * rng.randn(d, d), 0.3 * rng.randn(d)
    shift, scale = rng.randn(d), np.exp(rng.randn(d))
    flow, input_map = linear_flow(W, b), standardization(shift, scale)
    x = rng.randn(50, d) * scale + shift
    # z(1) = e^W z0 + W^{-1}(e^W - I) b and log|det dz(1)/dz0| = Tr(W).
    z0 = (x - shift) / scale
    z1 = z0 @ expm(W).T + np.linalg.solve(W, (expm(W) - np.eye(d)) @ b)
    expected = multivariate_normal(np.zeros(d)).logpdf(z1) + np.trace(W) - np.log(scale).sum()
    log_prob = exact_log_density(flow, input_map, x, 1e-10)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-7)
    latent = Evaluator(flow, 1e-10, 1e-10, dtype=torch.float64).to_latent(input_map.forward(x)[0])
    np.testing.assert_allclose(latent, z1, atol=1e-7)


def test_per_row_solver_matches_a_tight_torchdiffeq_solve():
    flow = random_flow(2, n_blocks=2)
    x = torch.randn(30, 2, dtype=torch.float64)
    config = SolverConfig(method="dopri5", atol=1e-11, rtol=1e-11, adjoint=False)
    dynamics = flow.training_dynamics("exact", ())
    with torch.no_grad():
        reference, _ = flow.training_log_prob(x, config, dynamics)
    log_prob = Evaluator(flow, 1e-9, 1e-9, dtype=torch.float64).log_prob(x)
    np.testing.assert_allclose(log_prob, reference, atol=1e-6)


def test_per_row_solver_rows_do_not_interact():
    # dy/dt = -r y (1 + sin 10t), with each row's rate r carried as a constant second column.
    # A stiff row (r = 50) beside easy ones must not change their steps.
    def func(t, y):
        dy = -y[:, 1:] * y[:, :1] * (1 + torch.sin(10 * t))
        return torch.cat([dy, torch.zeros_like(dy)], dim=1)

    rates = np.array([1.0, 50.0, 0.1])
    y0 = torch.tensor([[1.0, r] for r in rates], dtype=torch.float64)
    together = solve_per_row(func, y0, 1e-6, 1e-6)
    for i in range(3):
        alone = solve_per_row(func, y0[i:i + 1], 1e-6, 1e-6)
        assert together[i, 0].item() == alone[0, 0].item()
    exact = np.exp(-rates * (1 + (1 - np.cos(10)) / 10))
    np.testing.assert_allclose(together[:, 0], exact, rtol=1e-4, atol=1e-6)


def test_per_row_solver_refills_its_batch_without_changing_rows():
    # Rows join as others finish: calls never exceed max_rows, stay full while rows wait, and
    # every row gets exactly the result (and evaluation count) it gets when solved alone.
    def func(t, y):
        sizes.append(y.shape[0])
        dy = -y[:, 1:] * y[:, :1] * (1 + torch.sin(10 * t))
        return torch.cat([dy, torch.zeros_like(dy)], dim=1)

    rates = np.geomspace(0.05, 50.0, 23)
    y0 = torch.tensor([[1.0, r] for r in rates], dtype=torch.float64)
    sizes = []
    nfe = torch.zeros(len(rates), dtype=torch.long)
    batched = solve_per_row(func, y0, 1e-6, 1e-6, max_rows=5, nfe=nfe)
    assert max(sizes) == 5 and sizes.count(5) > len(sizes) // 2
    assert sum(sizes) == int(nfe.sum())
    for i in range(len(rates)):
        alone_nfe = torch.zeros(1, dtype=torch.long)
        alone = solve_per_row(func, y0[i:i + 1], 1e-6, 1e-6, nfe=alone_nfe)
        assert batched[i, 0].item() == alone[0, 0].item() and nfe[i] == alone_nfe[0]
    exact = np.exp(-rates * (1 + (1 - np.cos(10)) / 10))
    np.testing.assert_allclose(batched[:, 0], exact, rtol=1e-3, atol=1e-6)  # global error


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_gradients_equal_direct_backprop(divergence):
    x = torch.randn(16, 2, dtype=torch.float64)
    noise = sample_noise(x.shape, "rademacher", torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        flow = random_flow(2, n_blocks=2)
        flow.blocks[0].sqrt_time_length.requires_grad_(True)  # the learned end time too
        config = SolverConfig(method="dopri5", atol=1e-10, rtol=1e-10, adjoint=adjoint)
        dynamics = flow.training_dynamics(divergence, ("kinetic_energy", "jacobian_frobenius"))
        log_prob, penalties = flow.training_log_prob(x, config, dynamics, noise)
        loss = -log_prob.mean() + 0.1 * sum(p.mean() for p in penalties.values())
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in flow.parameters()
                                if p.requires_grad]))
    assert grads[0].abs().max() > 1e-3
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-8)


def test_fixed_grid_training_solver_converges_to_the_adaptive_one():
    flow = random_flow(2)  # time features up to 8 pi: the grids start at 8 steps
    x = torch.randn(10, 2, dtype=torch.float64)
    dynamics = flow.training_dynamics("exact", ())
    with torch.no_grad():
        adaptive, _ = flow.training_log_prob(x, SolverConfig(atol=1e-10, rtol=1e-10,
                                                             adjoint=False), dynamics)
        errors = [(flow.training_log_prob(x, SolverConfig(method="rk4", n_steps=n,
                                                          adjoint=False), dynamics)[0]
                   - adaptive).abs().max().item() for n in (8, 16, 32)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


@pytest.mark.parametrize("method", FIXED_GRID_METHODS)
@pytest.mark.parametrize("reverse", [False, True])
def test_the_fixed_grid_solve_is_torchdiffeqs_with_its_gradients(method, reverse):
    # Training's own fixed-grid loop (it reads nothing back from the device) takes the steps
    # of torchdiffeq's methods: the same states and the same gradients, to rounding.
    x = torch.randn(12, 2, dtype=torch.float64)
    results = []
    for ours in (True, False):
        flow = random_flow(2)
        (func,) = flow.training_dynamics("exact", ("kinetic_energy",))
        state = (x, torch.zeros(12, dtype=torch.float64), torch.zeros(12, dtype=torch.float64))
        if ours:
            config = SolverConfig(method=method, n_steps=5, adjoint=False)
            end = integrate(func, state, config, reverse=reverse)
        else:
            times = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=torch.float64)
            end = tuple(c[-1] for c in torchdiffeq.odeint(func, state, times, method=method,
                                                          options={"step_size": 0.2}))
        sum(component.sum() for component in end).backward()
        results.append((torch.cat([c.flatten() for c in end]).detach(),
                        torch.cat([p.grad.flatten() for p in flow.parameters()
                                   if p.grad is not None])))
    (states, grads), (expected_states, expected_grads) = results
    assert (states[:24] - x.flatten()).abs().max() > 1e-2  # the rows moved
    np.testing.assert_allclose(states, expected_states, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads, expected_grads, rtol=1e-10, atol=1e-12)


def test_inverse_transform_undoes_transform(fitted_2d):
    est, X = fitted_2d
    Z = est.transform(X[:50])
    assert np.abs(Z - X[:50]).max() > 0.1  # the flow is not the identity
    np.testing.assert_allclose(est.inverse_transform(Z), X[:50], atol=1e-4)


def test_sampling_follows_the_latent_map(fitted_2d):
    est, _ = fitted_2d
    samples = est.sample(40, random_state=3)
    Z = np.random.RandomState(3).standard_normal((40, 2))
    np.testing.assert_allclose(est.transform(samples), Z, atol=1e-4)


def _trapezoid_2d(values, xs, ys):
    return np.trapezoid(np.trapezoid(values, ys, axis=1), xs)


def test_density_integrates_to_one_in_2d(fitted_2d):
    est, X = fitted_2d
    xs = np.linspace(-7, 7, 141)
    ys = np.linspace(-12, 12, 161)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(est.score_samples(grid)).reshape(len(xs), len(ys))
    assert abs(_trapezoid_2d(density, xs, ys) - 1) < 0.01


def test_density_integrates_to_one_in_1d():
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.normal(-2, 0.4, 300), rng.normal(1, 0.8, 300)])[:, None] * 3 + 10
    est = FFJORDDensity(hidden_dims=(32, 32), training="flow_matching", max_iter=1000,
                        learning_rate=5e-3, n_iter_no_change=None, validation_interval=250,
                        random_state=0).fit(X)
    xs = np.linspace(-20, 40, 3001)
    density = np.exp(est.score_samples(xs[:, None]))
    assert abs(np.trapezoid(density, xs) - 1) < 0.01
    # and it learned the two modes (4 and 13): the density dips between them, where a single
    # Gaussian would peak
    def at(v):
        return np.exp(est.score_samples(np.array([[v]])))[0]
    assert at(4) > at(7) < at(13)


def test_evaluation_nfe_counts_every_dynamics_call(fitted_2d, monkeypatch):
    est, X = fitted_2d
    calls = []
    from skflow.cnf.frozen import FrozenBlock
    original = FrozenBlock.velocity_and_divergence

    def counting(self, s, z):
        calls.append(z.shape[0])
        return original(self, s, z)

    monkeypatch.setattr(FrozenBlock, "velocity_and_divergence", counting)
    nfe = est.evaluation_nfe(X[:1])
    assert nfe.shape == (1,) and nfe[0] == len(calls) and nfe[0] >= 8


# ------------------------------------------------------------------ flow-matching targets
def gaussian_marginal_velocity(x_tau, tau, mean, var):
    """The straight path's exact marginal velocity for data N(mean, var) in one dimension:
    x_tau ~ N((1 - tau) mean, (1 - tau)^2 var + tau^2), and E[x | x_tau] is linear in x_tau."""
    a = 1 - tau
    expected_x = mean + a * var / (a ** 2 * var + tau ** 2) * (x_tau - a * mean)
    return (x_tau - expected_x) / tau


def test_averaged_target_estimates_the_marginal_velocity_and_cuts_the_noise():
    g = torch.Generator().manual_seed(0)
    n = 8192
    x = 1.5 + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    tau = torch.rand(n, 1, generator=g, dtype=torch.float64).clamp(min=0.05)
    # The rows' own moments: the average targets the sample's field, not the population's.
    exact = gaussian_marginal_velocity((1 - tau) * x + tau * eps, tau, x.mean(), x.var())
    averaged = marginal_velocity(x, eps, tau, reference_rows=n)
    conditional = marginal_velocity(x, eps, tau, reference_rows=1)
    assert torch.equal(conditional, eps - x)  # one reference row: the row's own velocity
    # No bias, and a thousandth of the row's own velocity's squared error (0.8 here).
    error = averaged - exact
    assert abs(error.mean()) < 1e-3
    assert (error ** 2).mean() < 1e-3 * ((conditional - exact) ** 2).mean()


def test_averaged_target_uses_only_the_rows_block():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    tau = torch.rand(8, 1, generator=g)
    whole = marginal_velocity(x, eps, tau, reference_rows=4)
    moved = x.clone()
    moved[4:] += 100.0  # the second block only
    assert torch.equal(marginal_velocity(moved, eps, tau, reference_rows=4)[:4], whole[:4])
    assert torch.allclose(whole[:4], marginal_velocity(x[:4], eps[:4], tau[:4], 4))


def test_averaged_target_at_the_data_end_is_the_rows_own_velocity():
    # torch.rand can draw tau = 0 exactly; the average there must stay finite (a NaN target
    # made training restore its weights and cut the learning rate).
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    tau = torch.rand(6, 1, generator=g)
    tau[2] = 0.0
    target = marginal_velocity(x, eps, tau, reference_rows=6)
    assert torch.isfinite(target).all()
    assert torch.equal(target[2], eps[2] - x[2])
    others = [0, 1, 3, 4, 5]
    tau_others = tau.clone()
    tau_others[2] = 0.5  # the other rows' targets do not depend on row 2's time
    assert torch.equal(marginal_velocity(x, eps, tau_others, 6)[others], target[others])
