#!/usr/bin/env python3
r"""Tests for ``botorch_community.acquisition.discretized``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from botorch.acquisition import (
    qExpectedImprovement,
    qLogExpectedImprovement,
    qLogNoisyExpectedImprovement,
    qUpperConfidenceBound,
)
from botorch.acquisition.input_constructors import get_acqf_input_constructor
from botorch.acquisition.objective import (
    IdentityMCObjective,
    ScalarizedPosteriorTransform,
)
from botorch.exceptions.errors import UnsupportedError
from botorch.models.model import Model
from botorch.sampling.normal import SobolQMCNormalSampler
from botorch.utils.datasets import SupervisedDataset
from botorch.utils.testing import BotorchTestCase
from botorch_community.acquisition.discretized import (
    DiscretizedAcquisitionFunction,
    DiscretizedAcquistionFunction,
    DiscretizedExpectedImprovement,
    DiscretizedLogExpectedImprovement,
    DiscretizedNoisyExpectedImprovement,
    DiscretizedProbabilityOfImprovement,
    DiscretizedUpperConfidenceBound,
)
from botorch_community.posteriors.riemann import (
    BoundedRiemannPosterior,
    MultivariateRiemannPosterior,
)

DT = torch.float64
BORDERS = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], dtype=DT)  # B = 5


class SoftmaxModel(Model):
    r"""Fake PFN: probabilities = softmax(X @ W + b (+ pending shift))."""

    def __init__(self, d: int = 2, seed: int = 0, multivariate: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        B = BORDERS.numel() - 1
        self.W = torch.randn(d, B, generator=gen, dtype=DT)
        self.b = torch.randn(B, generator=gen, dtype=DT)
        self.pending_shift = torch.randn(B, generator=gen, dtype=DT)
        self.multivariate = multivariate
        self.calls: list[dict] = []

    @property
    def num_outputs(self) -> int:
        return 1

    def posterior(
        self,
        X,
        output_indices=None,
        observation_noise=False,
        posterior_transform=None,
        pending_X=None,
        negate_train_ys=False,
    ):
        self.calls.append({"pending_X": pending_X, "negate_train_ys": negate_train_ys})
        logits = X @ self.W.to(X) + self.b.to(X)
        if pending_X is not None:
            logits = logits + pending_X.sum() * self.pending_shift.to(X)
        probs = logits.softmax(dim=-1)
        borders = BORDERS
        if negate_train_ys:  # an exactly symmetric "PFN"
            borders, probs = -borders.flip(0), probs.flip(-1)
        if self.multivariate:
            dist = (X.unsqueeze(-2) - X.unsqueeze(-3)).norm(dim=-1)
            corr = torch.exp(-dist)
            return MultivariateRiemannPosterior(borders, probs, corr)
        return BoundedRiemannPosterior(borders, probs)


class PlainModel(Model):
    r"""A Riemann model whose posterior takes no ``pending_X``/``negate_train_ys``."""

    def __init__(self):
        super().__init__()
        self._num_outputs = 1

    def posterior(self, X, output_indices=None, observation_noise=False):
        probs = torch.full(X.shape[:-1] + (5,), 0.2, dtype=X.dtype)
        return BoundedRiemannPosterior(BORDERS, probs)


class FixedProbsModel(Model):
    r"""Returns the same (given) probabilities for every X."""

    def __init__(self, probs, borders=BORDERS):
        super().__init__()
        self.probs, self.borders = probs, borders
        self._num_outputs = 1

    def posterior(self, X, pending_X=None, negate_train_ys=False, **kwargs):
        probs = self.probs.expand(X.shape[:-1] + self.probs.shape[-1:])
        return BoundedRiemannPosterior(self.borders, probs)


def brute_force(probs, utility, borders=BORDERS, n=20_000):
    r"""Midpoint-rule integral of ``utility(y) p(y)`` for one probability vector."""
    grid = torch.linspace(borders[0], borders[-1], n + 1, dtype=DT)
    mids = (grid[1:] + grid[:-1]) / 2
    idx = torch.searchsorted(borders, mids, right=True) - 1
    density = probs[idx] / (borders[1:] - borders[:-1])[idx]
    return (utility(mids) * density).sum() * (borders[-1] - borders[0]) / n


class TestDiscretizedEI(BotorchTestCase):
    def test_ei_matches_brute_force_integral(self):
        model = SoftmaxModel()
        X = torch.rand(3, 1, 2, dtype=DT)
        probs = model.posterior(X).probabilities.squeeze(-2)
        # inside buckets, exactly on an edge, below and above all buckets
        for best_f in [0.3, 0.5, -1.0, -5.0, 3.0, 10.0]:
            for maximize in [True, False]:
                acqf = DiscretizedExpectedImprovement(
                    model, best_f=best_f, maximize=maximize
                )
                values = acqf(X)
                self.assertEqual(values.shape, torch.Size([3]))
                self.assertEqual(values.dtype, DT)
                sign = 1.0 if maximize else -1.0
                for j in range(3):
                    ref = brute_force(
                        probs[j], lambda y, s=sign, t=best_f: (s * (y - t)).clamp_min(0)
                    )
                    self.assertAllClose(values[j], ref, atol=1e-8, rtol=1e-6)
        # DiscretizedAcquistionFunction (upstream's spelling) is the same class
        self.assertIs(DiscretizedAcquistionFunction, DiscretizedAcquisitionFunction)

    def test_ei_gradients(self):
        probs = torch.softmax(torch.randn(5, dtype=DT), -1).requires_grad_(True)
        X = torch.zeros(1, 1, 2, dtype=DT)
        for best_f in [-3.0, 0.25, 0.5, 2.0]:

            def ei_of_probs(p, best_f=best_f):
                return DiscretizedExpectedImprovement(FixedProbsModel(p), best_f)(X)

            self.assertTrue(torch.autograd.gradcheck(ei_of_probs, (probs,)))
        # d EI / d best_f = -P(Y > best_f), also exactly at a bucket edge
        p = probs.detach()
        post = BoundedRiemannPosterior(BORDERS, p)
        for t in [0.0, 0.5, 0.7, -1.5]:
            best_f = torch.tensor(t, dtype=DT, requires_grad=True)
            DiscretizedExpectedImprovement(FixedProbsModel(p), best_f)(X).backward()
            self.assertAllClose(best_f.grad, post.cdf(t) - 1)
        # gradcheck w.r.t. X through the softmax model
        model = SoftmaxModel()
        acqf = DiscretizedExpectedImprovement(model, best_f=0.4)
        Xg = torch.rand(4, 1, 2, dtype=DT, requires_grad=True)
        self.assertTrue(torch.autograd.gradcheck(acqf, (Xg,)))

    def test_minimization_routes_agree(self):
        model = SoftmaxModel()
        X = torch.rand(4, 1, 2, dtype=DT)
        reference = DiscretizedExpectedImprovement(model, 0.2, maximize=False)(X)
        # Ax's way: weight -1, best_f in the transformed space
        pt = ScalarizedPosteriorTransform(weights=torch.tensor([-1.0], dtype=DT))
        via_pt = DiscretizedExpectedImprovement(model, -0.2, posterior_transform=pt)
        self.assertAllClose(via_pt(X), reference)
        # asking the model for the posterior of -y (exactly symmetric here)
        sym = DiscretizedExpectedImprovement(
            model, 0.2, maximize=False, assume_symmetric_posterior=True
        )
        model.calls.clear()
        self.assertAllClose(sym(X), reference)
        self.assertTrue(model.calls[-1]["negate_train_ys"])
        # an affine scalarization 2y + 1 scales EI by 2
        pt2 = ScalarizedPosteriorTransform(
            weights=torch.tensor([2.0], dtype=DT), offset=1.0
        )
        scaled = DiscretizedExpectedImprovement(
            model, 0.4 + 1.0, posterior_transform=pt2
        )
        plain = DiscretizedExpectedImprovement(model, 0.2)
        self.assertAllClose(scaled(X), 2 * plain(X))
        with self.assertRaisesRegex(UnsupportedError, "negate_train_ys"):
            DiscretizedExpectedImprovement(
                PlainModel(), 0.0, maximize=False, assume_symmetric_posterior=True
            )
        with self.assertRaisesRegex(UnsupportedError, "exactly one non-zero weight"):
            DiscretizedExpectedImprovement(
                model,
                0.0,
                posterior_transform=ScalarizedPosteriorTransform(
                    weights=torch.ones(2, dtype=DT)
                ),
            )

    def test_shapes_and_dtypes(self):
        model = SoftmaxModel()
        acqf = DiscretizedExpectedImprovement(model, best_f=0.0)
        self.assertEqual(acqf(torch.rand(1, 2, dtype=DT)).shape, torch.Size([1]))
        self.assertEqual(acqf(torch.rand(2, 3, 1, 2, dtype=DT)).shape, (2, 3))
        self.assertEqual(acqf(torch.rand(5, 1, 2)).dtype, torch.float32)
        with self.assertRaises(AssertionError):  # q = 2 is not supported
            acqf(torch.rand(5, 2, 2, dtype=DT))
        with self.assertRaisesRegex(ValueError, "scalar"):
            DiscretizedExpectedImprovement(model, best_f=torch.zeros(2))
        with self.assertRaisesRegex(UnsupportedError, "BoundedRiemannPosterior"):

            class NotRiemann(PlainModel):
                def posterior(self, X, **kwargs):
                    return None

            DiscretizedExpectedImprovement(NotRiemann(), 0.0)(torch.rand(1, 1, 2))


class TestDiscretizedPI(BotorchTestCase):
    def test_pi(self):
        model = SoftmaxModel()
        X = torch.rand(3, 1, 2, dtype=DT)
        post = model.posterior(X)
        for best_f in [-3.0, -1.0, 0.7, 3.5]:
            pi = DiscretizedProbabilityOfImprovement(model, best_f)(X)
            self.assertAllClose(pi, 1 - post.cdf(best_f).squeeze(-1))
            pi_min = DiscretizedProbabilityOfImprovement(model, best_f, maximize=False)
            self.assertAllClose(pi_min(X), post.cdf(best_f).squeeze(-1))
            probs = post.probabilities[0, 0]
            ref = brute_force(probs, lambda y, t=best_f: (y > t).to(DT))
            self.assertAllClose(pi[0], ref, atol=1e-6, rtol=0)
        probs = torch.softmax(torch.randn(5, dtype=DT), -1).requires_grad_(True)
        X1 = torch.zeros(1, 1, 2, dtype=DT)
        self.assertTrue(
            torch.autograd.gradcheck(
                lambda p: DiscretizedProbabilityOfImprovement(FixedProbsModel(p), 0.7)(
                    X1
                ),
                (probs,),
            )
        )


class TestDiscretizedLogEI(BotorchTestCase):
    def test_log_ei_equals_log_ei_where_positive(self):
        model = SoftmaxModel()
        X = torch.rand(4, 1, 2, dtype=DT)
        for best_f in [-5.0, -1.0, 0.3, 0.5, 2.9]:
            for maximize in [True, False]:
                ei = DiscretizedExpectedImprovement(model, best_f, maximize=maximize)
                log_ei = DiscretizedLogExpectedImprovement(
                    model, best_f, maximize=maximize
                )
                if best_f == -5.0 and not maximize:  # EI = 0 (surrogate regime)
                    self.assertTrue((ei(X) == 0).all())
                    continue
                self.assertTrue((ei(X) > 0).all())
                self.assertAllClose(log_ei(X), ei(X).log(), atol=1e-10, rtol=1e-10)
        # EI underflows (1e-300 * 1e-40 < 5e-324) but LogEI is exact in log space
        probs = torch.tensor([0.5, 0.5 - 1e-300, 0, 0, 1e-300], dtype=DT)
        best_f = 3.0 - 1e-12  # improvement integral (u - t)^2 / 2 ~ 5e-25
        gap = 3.0 - best_f  # exact in float64
        fixed = FixedProbsModel(probs)
        X1 = torch.zeros(1, 1, 2, dtype=DT)
        self.assertEqual(DiscretizedExpectedImprovement(fixed, best_f)(X1).item(), 0)
        # log(p / w * gap^2 / 2) with p = 1e-300, w = 2
        expected = math.log(1e-300) + 2 * math.log(gap) - math.log(2) - math.log(2)
        log_ei = DiscretizedLogExpectedImprovement(fixed, best_f)(X1)
        self.assertAllClose(log_ei, torch.tensor([expected], dtype=DT), rtol=1e-12)

    def test_log_ei_finite_where_ei_is_zero(self):
        model = SoftmaxModel()
        X = torch.rand(6, 1, 2, dtype=DT, requires_grad=True)
        for best_f, maximize in [(3.0, True), (50.0, True), (-2.0, False)]:
            ei = DiscretizedExpectedImprovement(model, best_f, maximize=maximize)
            self.assertTrue((ei(X) == 0).all())
            acqf = DiscretizedLogExpectedImprovement(model, best_f, maximize=maximize)
            value = acqf(X)
            self.assertTrue(torch.isfinite(value).all())
            (grad,) = torch.autograd.grad(value.sum(), X)
            self.assertTrue(torch.isfinite(grad).all())
            self.assertTrue((grad.abs().sum(-1) > 0).all())
            self.assertTrue(torch.autograd.gradcheck(acqf, (X,)))
        # in that regime, moving mass towards best_f increases the value
        low = torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05], dtype=DT)
        high = torch.tensor([0.1, 0.1, 0.1, 0.05, 0.65], dtype=DT)
        X1 = torch.zeros(1, 1, 2, dtype=DT)
        v_low = DiscretizedLogExpectedImprovement(FixedProbsModel(low), 4.0)(X1)
        v_high = DiscretizedLogExpectedImprovement(FixedProbsModel(high), 4.0)(X1)
        self.assertGreater(v_high.item(), v_low.item())
        # and decreases smoothly as best_f moves further away
        v_far = DiscretizedLogExpectedImprovement(FixedProbsModel(high), 4.5)(X1)
        self.assertLess(v_far.item(), v_high.item())

    def test_log_ei_gradcheck_probs(self):
        X1 = torch.zeros(1, 1, 2, dtype=DT)
        probs = torch.softmax(torch.randn(5, dtype=DT), -1).requires_grad_(True)
        for best_f in [-3.0, 0.2, 0.5, 5.0]:  # last: surrogate regime
            self.assertTrue(
                torch.autograd.gradcheck(
                    lambda p, b=best_f: DiscretizedLogExpectedImprovement(
                        FixedProbsModel(p), b
                    )(X1),
                    (probs,),
                )
            )
        # zero-probability buckets give finite (not NaN) gradients
        p0 = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0], dtype=DT, requires_grad=True)
        for best_f in [0.2, -1.5]:
            DiscretizedLogExpectedImprovement(FixedProbsModel(p0), best_f)(
                X1
            ).backward()
            self.assertTrue(torch.isfinite(p0.grad).all())
            p0.grad = None
        with self.assertRaisesRegex(ValueError, "tail_scale"):
            DiscretizedLogExpectedImprovement(FixedProbsModel(p0), 0.0, tail_scale=0.0)


class TestDiscretizedUCB(BotorchTestCase):
    def test_ucb_is_the_quantile(self):
        uniform = torch.full((4,), 0.25, dtype=DT)
        borders = torch.linspace(0, 1, 5, dtype=DT)
        model = FixedProbsModel(uniform, borders)
        X = torch.zeros(3, 1, 2, dtype=DT)
        for beta in [0.0, 0.2, 4.0]:
            level = 0.5 * (1 + math.erf(math.sqrt(beta) / math.sqrt(2)))
            ucb = DiscretizedUpperConfidenceBound(model, beta=beta)
            self.assertAllClose(ucb(X), torch.full((3,), level, dtype=DT))
            ucb_min = DiscretizedUpperConfidenceBound(model, beta=beta, maximize=False)
            self.assertAllClose(ucb_min(X), torch.full((3,), -(1 - level), dtype=DT))
        ucb = DiscretizedUpperConfidenceBound(model, quantile=0.9)
        self.assertAllClose(ucb(X), torch.full((3,), 0.9, dtype=DT))
        # skewed posterior, hand computed: [-2,-1) .5, [-1,0) .3, [0,.5) .2
        skewed = FixedProbsModel(torch.tensor([0.5, 0.3, 0.2, 0, 0], dtype=DT))
        ucb = DiscretizedUpperConfidenceBound(skewed, quantile=0.9)
        self.assertAllClose(ucb(X), torch.full((3,), 0.25, dtype=DT))
        model = SoftmaxModel()
        acqf = DiscretizedUpperConfidenceBound(model, beta=1.0)
        Xg = torch.rand(3, 1, 2, dtype=DT, requires_grad=True)
        self.assertTrue(torch.autograd.gradcheck(acqf, (Xg,)))
        with self.assertRaisesRegex(ValueError, "quantile"):
            DiscretizedUpperConfidenceBound(model, quantile=1.0)
        with self.assertRaisesRegex(ValueError, "beta"):
            DiscretizedUpperConfidenceBound(model, beta=-1.0)


class TestPendingAndNoisyEI(BotorchTestCase):
    def test_x_pending_is_passed_to_the_model(self):
        model = SoftmaxModel()
        X = torch.rand(3, 1, 2, dtype=DT)
        X_pending = torch.rand(2, 2, dtype=DT)
        for cls, kwargs in [
            (DiscretizedExpectedImprovement, {"best_f": 0.1}),
            (DiscretizedLogExpectedImprovement, {"best_f": 0.1}),
            (DiscretizedProbabilityOfImprovement, {"best_f": 0.1}),
            (DiscretizedUpperConfidenceBound, {"beta": 1.0}),
            (DiscretizedNoisyExpectedImprovement, {}),
        ]:
            without = cls(model, **kwargs)(X)
            self.assertIsNone(model.calls[-1]["pending_X"])
            acqf = cls(model, X_pending=X_pending, **kwargs)
            with_pending = acqf(X)
            self.assertIs(model.calls[-1]["pending_X"], acqf.X_pending)
            self.assertAllClose(model.calls[-1]["pending_X"], X_pending)
            self.assertFalse(torch.allclose(without, with_pending))
            acqf.set_X_pending(None)
            self.assertAllClose(acqf(X), without)
            with self.assertRaisesRegex(UnsupportedError, "pending_X"):
                cls(PlainModel(), X_pending=X_pending, **kwargs)
            # without pending points a plain model works
            self.assertEqual(cls(PlainModel(), **kwargs)(X).shape, torch.Size([3]))

    def test_noisy_ei(self):
        model = SoftmaxModel()
        X = torch.rand(3, 1, 2, dtype=DT)
        nei = DiscretizedNoisyExpectedImprovement(model)
        self.assertAllClose(nei(X), DiscretizedExpectedImprovement(model, 0.0)(X))
        pt = ScalarizedPosteriorTransform(weights=torch.tensor([-1.0], dtype=DT))
        nei_min = DiscretizedNoisyExpectedImprovement(model, posterior_transform=pt)
        value = nei_min(X)
        self.assertTrue(model.calls[-1]["negate_train_ys"])
        # the fake model's negated posterior is that of -y: EI of -y over 0
        ref = DiscretizedExpectedImprovement(model, 0.0, maximize=False)(X)
        self.assertAllClose(value, ref)
        with self.assertRaisesRegex(UnsupportedError, "negate_train_ys"):
            DiscretizedNoisyExpectedImprovement(PlainModel(), maximize=False)


class TestInputConstructors(BotorchTestCase):
    def _data(self):
        X = torch.rand(6, 2, dtype=DT)
        Y = torch.tensor([[0.3], [-1.2], [0.9], [0.1], [-0.4], [0.5]], dtype=DT)
        return SupervisedDataset(X, Y, feature_names=["a", "b"], outcome_names=["y"])

    def test_constructors_build_the_acqfs(self):
        model, data = SoftmaxModel(), self._data()
        X = torch.rand(3, 1, 2, dtype=DT)
        X_pending = torch.rand(1, 2, dtype=DT)
        minimize = ScalarizedPosteriorTransform(weights=torch.tensor([-1.0], dtype=DT))
        ax_like = {  # what Ax passes (None values are dropped by Ax)
            "X_baseline": data.X,
            "bounds": torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT),
            "constraints_tuple": None,
            "objective": IdentityMCObjective(),
        }
        for cls in [
            DiscretizedExpectedImprovement,
            DiscretizedLogExpectedImprovement,
            DiscretizedProbabilityOfImprovement,
        ]:
            constructor = get_acqf_input_constructor(cls)
            kw = constructor(model=model, training_data=data, **ax_like)
            self.assertAllClose(
                torch.as_tensor(kw["best_f"]), torch.tensor(0.9, dtype=DT)
            )
            self.assertTrue(kw["maximize"])
            kw = constructor(
                model=model,
                training_data=data,
                posterior_transform=minimize,
                X_pending=X_pending,
                **ax_like,
            )
            # minimisation: best_f is the smallest observed y, in outcome space
            self.assertAllClose(
                torch.as_tensor(kw["best_f"]), torch.tensor(-1.2, dtype=DT)
            )
            self.assertFalse(kw["maximize"])
            self.assertIsNone(kw["posterior_transform"])
            acqf = cls(**kw)
            self.assertAllClose(acqf.X_pending, X_pending)
            ref = cls(model, best_f=-1.2, maximize=False, X_pending=X_pending)
            self.assertAllClose(acqf(X), ref(X))
            kw = constructor(model=model, training_data=data, best_f=0.0)
            self.assertEqual(kw["best_f"], 0.0)
        kw = get_acqf_input_constructor(DiscretizedNoisyExpectedImprovement)(
            model=model,
            training_data=data,
            posterior_transform=minimize,
            X_pending=X_pending,
            **ax_like,
        )
        self.assertFalse(kw["maximize"])
        self.assertEqual(DiscretizedNoisyExpectedImprovement(**kw)(X).shape, (3,))
        kw = get_acqf_input_constructor(DiscretizedUpperConfidenceBound)(
            model=model, training_data=data, beta=4.0, **ax_like
        )
        self.assertEqual(DiscretizedUpperConfidenceBound(**kw)(X).shape, (3,))
        with self.assertRaisesRegex(UnsupportedError, "ScalarizedPosteriorTransform"):
            get_acqf_input_constructor(DiscretizedExpectedImprovement)(
                model=model,
                training_data=data,
                posterior_transform=ScalarizedPosteriorTransform(
                    weights=torch.tensor([1.0, 1.0], dtype=DT)
                ),
            )

    def test_ours_win_over_upstream_registrations(self):
        # importing botorch's copy of the community input constructors afterwards
        # must neither fail nor replace our constructors
        import botorch_community.acquisition.input_constructors  # noqa: F401

        constructor = get_acqf_input_constructor(DiscretizedExpectedImprovement)
        kw = constructor(model=SoftmaxModel(), training_data=self._data())
        self.assertIn("maximize", kw)  # upstream's constructor has no `maximize`
        # and the other import order, in a fresh interpreter
        code = textwrap.dedent(
            """
            import botorch_community.acquisition.input_constructors
            from botorch.acquisition.input_constructors import (
                get_acqf_input_constructor,
            )
            from botorch_community.acquisition import (
                discretized_input_constructors as d,
            )
            for cls in d._INPUT_CONSTRUCTORS:
                f = get_acqf_input_constructor(cls)
                names = [c.cell_contents.__name__ for c in f.__closure__
                         if callable(c.cell_contents)]
                assert names == [d._INPUT_CONSTRUCTORS[cls].__name__], names
            print("ok")
            """
        )
        root = str(Path(__file__).resolve().parents[1])
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "ok")

    def test_input_constructors_live_in_their_own_module(self):
        from botorch_community.acquisition import (
            discretized as d,
            discretized_input_constructors as c,
        )

        for name in c.__all__:  # still importable from the classes' module
            self.assertIs(getattr(d, name), getattr(c, name))
        from botorch_community.acquisition.discretized import (  # noqa: F401
            construct_inputs_discretized_best_f,
        )

        with self.assertRaises(AttributeError):
            d.no_such_name  # noqa: B018
        # registered by importing the package (which precedes any submodule)
        for cls, constructor in c._INPUT_CONSTRUCTORS.items():
            f = get_acqf_input_constructor(cls)
            names = [
                x.cell_contents.__name__
                for x in f.__closure__
                if callable(x.cell_contents)
            ]
            self.assertEqual(names, [constructor.__name__])


class TestBotorchMCAcquisitions(BotorchTestCase):
    def test_mc_acquisitions_run_with_gradients(self):
        for multivariate in [False, True]:
            model = SoftmaxModel(multivariate=multivariate)
            X_baseline = torch.rand(4, 2, dtype=DT)
            sampler = SobolQMCNormalSampler(torch.Size([64]), seed=0)
            acqfs = [
                qExpectedImprovement(model, best_f=0.3, sampler=sampler),
                qLogExpectedImprovement(model, best_f=0.3, sampler=sampler),
                qUpperConfidenceBound(model, beta=0.5, sampler=sampler),
                qLogNoisyExpectedImprovement(
                    model, X_baseline=X_baseline, sampler=sampler, cache_root=False
                ),
            ]
            for acqf in acqfs:
                X = torch.rand(3, 2, 2, dtype=DT, requires_grad=True)  # q = 2
                value = acqf(X)
                self.assertEqual(value.shape, torch.Size([3]))
                self.assertTrue(torch.isfinite(value).all())
                (grad,) = torch.autograd.grad(value.sum(), X)
                self.assertTrue(torch.isfinite(grad).all())
                self.assertGreater(grad.abs().sum().item(), 0.0)

    def test_qei_agrees_with_exact_ei(self):
        model = SoftmaxModel()
        X = torch.rand(3, 1, 2, dtype=DT)
        sampler = SobolQMCNormalSampler(torch.Size([4096]), seed=0)
        mc = qExpectedImprovement(model, best_f=0.2, sampler=sampler)(X)
        exact = DiscretizedExpectedImprovement(model, best_f=0.2)(X)
        self.assertAllClose(mc, exact, rtol=0.02, atol=1e-3)


class TestOptimization(BotorchTestCase):
    def test_optimize_acqf_sequential_uses_pending_points(self):
        from botorch.optim import optimize_acqf

        model = SoftmaxModel()
        acqf = DiscretizedLogExpectedImprovement(model, best_f=0.5)
        bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT)
        candidates, values = optimize_acqf(
            acqf,
            bounds=bounds,
            q=2,
            num_restarts=2,
            raw_samples=16,
            sequential=True,
            options={"maxiter": 20},
        )
        self.assertEqual(candidates.shape, torch.Size([2, 2]))
        self.assertTrue(torch.isfinite(values).all())
        # the second candidate was chosen with the first one pending
        pending = [c["pending_X"] for c in model.calls if c["pending_X"] is not None]
        self.assertTrue(pending)
        self.assertAllClose(pending[-1][-1], candidates[0])


class TestPosteriorMeanIncumbent(BotorchTestCase):
    r"""``best_f=None``: the best posterior mean at the training inputs."""

    def _model(self):
        model = SoftmaxModel()
        model.train_X = torch.rand(6, 2, dtype=DT, generator=torch.Generator().manual_seed(3))
        model.train_Y = torch.randn(6, 1, dtype=DT)
        return model

    def test_default_is_best_posterior_mean_of_observed_rows(self):
        from botorch_community.acquisition.discretized import posterior_mean_incumbent

        model = self._model()
        model.train_Y[2] = float("nan")  # a row without target does not count
        observed = torch.tensor([True, True, False, True, True, True])
        mean = model.posterior(model.train_X[observed]).mean.squeeze(-1)
        for cls in (
            DiscretizedExpectedImprovement,
            DiscretizedLogExpectedImprovement,
            DiscretizedProbabilityOfImprovement,
        ):
            self.assertAllClose(cls(model).best_f, mean.max())
            self.assertAllClose(cls(model, maximize=False).best_f, mean.min())
            # an explicit best_f is kept as given
            self.assertAllClose(cls(model, best_f=0.25).best_f, torch.tensor(0.25, dtype=DT))
        transform = ScalarizedPosteriorTransform(weights=torch.tensor([-2.0], dtype=DT),
                                                 offset=1.0)
        self.assertAllClose(
            posterior_mean_incumbent(model, transform), (1.0 - 2.0 * mean).max()
        )

    def test_model_without_training_data_gets_a_clear_error(self):
        with self.assertRaisesRegex(UnsupportedError, "pass `best_f` explicitly"):
            DiscretizedLogExpectedImprovement(SoftmaxModel())

    def test_shipped_network_noisy_incumbent_below_noisy_max(self):
        r"""With noisy observations max(train_Y) is the largest noise draw; the default
        incumbent sits near the noise-free best instead (shipped network)."""
        from botorch_community.models.prior_fitted_network import PFNModel

        gen = torch.Generator().manual_seed(0)
        X = torch.rand(40, 2, dtype=DT, generator=gen)
        f = torch.sin(3 * X[:, :1]) + X[:, 1:] ** 2  # range ~[-0.1, 2]
        Y = f + 0.3 * torch.randn(40, 1, dtype=DT, generator=gen)
        acqf = DiscretizedLogExpectedImprovement(PFNModel(X, Y))
        self.assertLess(acqf.best_f.item(), Y.max().item() - 0.1)
        self.assertLess(abs(acqf.best_f.item() - f.max().item()), 0.3)


class TestPendingIncumbent(BotorchTestCase):
    def test_incumbent_raised_to_best_pending_mean(self):
        r"""Pending points count as observed at their predicted mean (kriging
        believer): the incumbent is the larger of best_f and their best mean."""
        model = SoftmaxModel()
        P = torch.rand(3, 2, dtype=DT, generator=torch.Generator().manual_seed(2))
        means = model.posterior(P.unsqueeze(-2)).mean.reshape(-1)
        for maximize in (True, False):
            low = (means.min() - 10) if maximize else (means.max() + 10)
            acqf = DiscretizedExpectedImprovement(model, best_f=low, maximize=maximize,
                                                  X_pending=P)
            t = acqf._threshold(means)
            expected = means.max() if maximize else -means.min()
            self.assertAllClose(t, expected)
            acqf.set_X_pending(None)  # back to best_f alone
            self.assertAllClose(acqf._threshold(means), low if maximize else -low)
