"""SA-Solver: stochastic Adams methods for diffusion SDEs (Xue et al. 2023), data-prediction form, EDM coordinates.

With lambda = -log sigma, h = lambda' - lambda and eta = tau^2 (the SDE's scale: eta = 0 the
probability-flow ODE, eta = 1 the diffusion SDE), the variance-controlled SDE's exact solution is

    x' = e^(-eta h) (sigma'/sigma) x + (1 + eta) int_{-h}^{0} e^((1 + eta) u) D(lambda' + u) du
         + sigma' sqrt(1 - e^(-2 eta h)) xi.

The SA-Predictor replaces D by its Lagrange polynomial in lambda through the last k evaluations
(Adams-Bashforth); the SA-Corrector redoes the step with the new evaluation at lambda' added as a
node (Adams-Moulton) and the same noise xi, so it costs no extra evaluation. The integrals are exact
(phi functions). As the reference code (and diffusers' SASolverScheduler), two-node steps add an
O(h^3) term (1 + eta) h^2 (1/2 - phi_2(-(1 + eta) h)) times D's divided difference.
"""
from __future__ import annotations

import math

from numpy.polynomial import Polynomial
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import phi
from diffbench.solvers.registry import register

ORDERS = (1, 2, 3, 4)


def sa_weights(lam: float, lam_next: float, nodes: list[float], eta: float) -> list[float]:
    """w_j = a int_{-h}^{0} e^(a u) l_j(lam_next + u) du, a = 1 + eta, for the Lagrange basis l_j on `nodes` (lambdas).

    int_{-h}^0 e^(a u) u^m du = (-1)^m m! h^(m+1) e^(-a h) phi_{m+1}(a h), exact and free of cancellation.
    """
    a, h = 1 + eta, lam_next - lam
    moments = [(-1) ** m * math.factorial(m) * h ** (m + 1) * math.exp(-a * h) * phi(m + 1, a * h)
               for m in range(len(nodes))]
    offsets = [node - lam_next for node in nodes]
    weights = []
    for j, u_j in enumerate(offsets):
        basis = math.prod((Polynomial([-u, 1.0]) / (u_j - u) for k, u in enumerate(offsets) if k != j),
                          start=Polynomial([1.0]))
        weights.append(a * sum(c * moments[m] for m, c in enumerate(basis.coef)))
    if len(nodes) == 2:
        # The reference code's O(h^3) term on two-node steps.
        delta = a * h**2 * (0.5 - phi(2, -a * h)) / (nodes[0] - nodes[1])
        weights = [weights[0] + delta, weights[1] - delta]
    return weights


def sa_step(x: Tensor, sigma: float, sigma_next: float, history: list[tuple[float, Tensor]], eta: float,
            xi: Tensor | None) -> Tensor:
    """One stochastic Adams step from sigma to sigma' > 0 with the (lambda, D) nodes of `history` and noise xi."""
    h = math.log(sigma / sigma_next)
    weights = sa_weights(-math.log(sigma), -math.log(sigma_next), [lam for lam, _ in history], eta)
    x = math.exp(-eta * h) * (sigma_next / sigma) * x + sum(w * d for w, (_, d) in zip(weights, history))
    if xi is not None:
        x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * xi
    return x


@register("sa_solver_3", order=2, stochastic="eta", predictor_order=3, corrector_order=3)
@register("sa_solver", order=2, stochastic="eta")
def sa_solver(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None, eta: float = 1.0,
              s_tmin: float = 0.0, s_tmax: float = float("inf"), predictor_order: int = 2, corrector_order: int = 2,
              lower_order_final: bool = True) -> Tensor:
    """SA-Solver (Xue et al. 2023, Alg. 1): stochastic Adams predictor-corrector, one evaluation per step.

    eta = tau^2 applies to steps starting at sigma in [s_tmin, s_tmax] (diffusers' default tau_func is
    1 on training steps 200..800, else 0); eta = 0 is the ODE solver (UniPC-like). Orders rise with the
    history (warm-up) and, with lower_order_final, fall over the last steps as in diffusers. A step to
    sigma = 0 returns D (the first-order data-prediction limit; the last correction is then moot).
    `sa_solver` is diffusers' default (2, 2), `sa_solver_3` the paper's choice for unconditional models.
    """
    check(predictor_order in ORDERS and corrector_order in ORDERS,
          f"solver.predictor_order and solver.corrector_order must be 1..4 (got {predictor_order}, {corrector_order})")
    check(eta >= 0, f"solver.eta must be >= 0 (got {eta})")
    n = len(sigmas) - 1
    history: list[tuple[float, Tensor]] = []  # (lambda, D), newest first
    last: tuple[Tensor, float, float, Tensor | None, int] | None = None  # last predictor's x, sigma, eta, xi, order_c
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            return denoised
        history = ([(-math.log(sigma), denoised)] + history)[:max(predictor_order, corrector_order)]
        if last is not None:
            # SA-Corrector: redo the last step with the new evaluation as a node, on the same noise.
            x_last, sigma_last, eta_last, xi_last, order_c = last
            x = sa_step(x_last, sigma_last, sigma, history[:order_c], eta_last, xi_last)
        step_eta = eta if s_tmin <= sigma <= s_tmax else 0.0
        xi = None
        if step_eta > 0:
            if noise is None:
                raise ValueError("sa_solver with eta > 0 needs a NoiseSource")
            xi = noise.randn_like(x)
        order_p = min(predictor_order, i + 1, n - i if lower_order_final else predictor_order)
        order_c = min(corrector_order, i + 2, n - i + 1 if lower_order_final else corrector_order)
        last = (x, sigma, step_eta, xi, order_c)
        # SA-Predictor: Adams-Bashforth on the newest order_p evaluations.
        x = sa_step(x, sigma, sigma_next, history[:order_p], step_eta, xi)
    return x
