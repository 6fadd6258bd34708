#!/usr/bin/env python3
r"""Pending points enter the context with believed targets (shipped network)."""

from __future__ import annotations

import torch
from botorch.optim import optimize_acqf
from botorch.test_functions import Hartmann
from botorch.utils.testing import BotorchTestCase
from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement
from botorch_community.models.prior_fitted_network import PFNModel

DT = torch.float64


def _hartmann_model(n: int = 30, seed: int = 0) -> tuple[PFNModel, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 6, dtype=DT, generator=gen)
    Y = Hartmann(dim=6, negate=True)(X).unsqueeze(-1)
    return PFNModel(X, Y), X, Y


class TestPendingPoints(BotorchTestCase):
    def test_pending_point_is_an_observation_at_its_predictive_mean(self):
        model, X, Y = _hartmann_model()
        x = torch.full((1, 6), 0.5, dtype=DT)
        Xt = torch.rand(4, 6, dtype=DT, generator=torch.Generator().manual_seed(5))
        free = model.posterior(x)
        pending = model.posterior(torch.cat([x, Xt]), pending_X=x)
        # a noise-free row at the believed (latent) mean; the observed rows' noise unknown
        Yvar = torch.cat([torch.full_like(Y, float("nan")), torch.zeros(1, 1, dtype=DT)])
        believer = PFNModel(torch.cat([X, x]), torch.cat([Y, free.mean.reshape(1, 1)]),
                            train_Yvar=Yvar)  # fmt: skip
        expected = believer.posterior(torch.cat([x, Xt]))
        # (up to the target standardisation, fitted to the observed rows only)
        self.assertAllClose(pending.mean, expected.mean, rtol=0.01, atol=1e-3)
        self.assertAllClose(pending.variance, expected.variance, rtol=0.03, atol=1e-4)
        # so the predictive at the pending point collapses (EI there drops)
        self.assertLess(pending.variance[0].sqrt().item(), 0.1 * free.variance.sqrt().item())

    def test_believed_target_is_the_exact_latent_mean(self):
        r"""With the GP predictive the believed target is the mixture's exact latent mean
        (not a bucket average), for the affine and the warped target map."""
        for warp in (False, True):
            model, X, Y = _hartmann_model()
            model.warp_targets = warp
            P = torch.rand(3, 6, dtype=DT, generator=torch.Generator().manual_seed(2))
            free = model.posterior(P.unsqueeze(1))  # latent predictive, no pending points
            ctx = model._context(P, False)
            believed = ctx.target_map.inverse(ctx.Y[-3:])  # user units
            self.assertAllClose(believed.view(-1), free.mean.view(-1), rtol=1e-9, atol=1e-9)

    def test_observations_at_means_collapse_the_latent_predictive_there(self):
        model, X, Y = _hartmann_model()
        Xq = torch.cat([X[:4], torch.rand(3, 6, dtype=DT)]).unsqueeze(1)
        plain = model.posterior(Xq)
        model.observations_at_means = True
        at_means = model.posterior(Xq)
        sy = Y.std()
        # at the observations: the same means (up to the particles' refit on the longer
        # context), no latent spread left
        self.assertAllClose(at_means.mean[:4], plain.mean[:4], atol=1e-3 * sy, rtol=0)
        self.assertLess(float(at_means.variance[:4].sqrt().max()), 0.01 * float(sy))
        self.assertGreater(float(plain.variance[:4].sqrt().min()), 0.01 * float(sy))
        # switched off: the plain predictive again (the context is rebuilt)
        model.observations_at_means = False
        again = model.posterior(Xq)
        self.assertAllClose(again.mean, plain.mean, rtol=1e-12, atol=0)
        self.assertAllClose(again.variance, plain.variance, rtol=1e-12, atol=0)

    def test_believed_targets_reused_and_cache_kept(self):
        model, X, _ = _hartmann_model()
        P = torch.rand(3, 6, dtype=DT, generator=torch.Generator().manual_seed(1))
        acqf = DiscretizedLogExpectedImprovement(model, X_pending=P)
        with model.cache_training_context():
            acqf(torch.rand(5, 1, 6, dtype=DT))
            memo = model._believed_memo[-1]
            n_enc = model.num_encodings
            acqf(torch.rand(5, 1, 6, dtype=DT))
            self.assertIs(model._believed_memo[-1], memo)  # same pending set: no new means
            self.assertEqual(model.num_encodings, n_enc)  # the held cache was kept
        # new training data: new believed targets
        model.train_Y = model.train_Y + 1.0
        model.posterior(torch.rand(2, 6, dtype=DT), pending_X=P)
        self.assertIsNot(model._believed_memo[-1], memo)
        # no pending points: an empty believed set
        self.assertEqual(model.posterior(P, pending_X=P[:0]).mean.shape, torch.Size([3, 1]))

    def test_sequential_batch_spreads_out(self):
        r"""q = 4 by sequential greedy optimisation: distinct, spread candidates, none
        on a pending point (with missing-target pending rows the network ignored them
        and batches were copies of one point)."""
        model, X, Y = _hartmann_model(n=40, seed=2)
        acqf = DiscretizedLogExpectedImprovement(model, best_f=Y.max())
        bounds = torch.stack([torch.zeros(6, dtype=DT), torch.ones(6, dtype=DT)])
        torch.manual_seed(0)
        with model.cache_training_context():
            cands, _ = optimize_acqf(acqf, bounds, q=4, num_restarts=4, raw_samples=128,
                                     sequential=True, options={"maxiter": 50})
        dist = torch.cdist(cands, cands) + torch.eye(4, dtype=DT) * 10
        self.assertGreater(dist.min().item(), 0.05)


class TestJointPosterior(BotorchTestCase):
    r"""With the GP head's predictive, `PFNModel.posterior` of `q > 1` points is their
    joint, so BoTorch's MC acquisitions neither duplicate a batch's points nor a pending
    one (shipped network)."""

    def test_batch_posterior_is_joint_with_the_marginals_of_single_points(self):
        model, X, _ = _hartmann_model()
        x = torch.full((1, 6), 0.5, dtype=DT)
        far = torch.zeros(1, 6, dtype=DT)
        Xq = torch.cat([x, x, far])
        joint = model.posterior(Xq)
        R = joint.correlation_matrix
        self.assertGreater(float(R[0, 1]), 0.999)  # a duplicate: the same value
        self.assertLess(abs(float(R[0, 2])), 0.5)
        single = model.posterior(Xq.unsqueeze(-2))  # q = 1 each: the marginals
        self.assertAllClose(joint.mean, single.mean.squeeze(-2))
        self.assertAllClose(joint.variance, single.variance.squeeze(-2))
        self.assertIsNone(model.posterior(x).covariances)  # q = 1: nothing to couple
        # draws: a duplicate's equal the original's; the marginals those of q = 1
        draws = joint.rsample(torch.Size([4096])).squeeze(-1)  # `4096 x 3`
        # (up to the latent jitter on the diagonal, 1e-8 of the outputscale)
        sd0 = float(single.variance[0].sqrt())
        self.assertAllClose(draws[:, 0], draws[:, 1], rtol=0.0, atol=5e-3 * sd0)
        for i in (0, 2):
            self.assertAllClose(draws[:, i].mean(), single.mean[i].squeeze(), rtol=0.0,
                                atol=0.1 * float(single.variance[i].sqrt()))  # fmt: skip
            self.assertAllClose(draws[:, i].std(), single.variance[i].sqrt().squeeze(), rtol=0.1, atol=0.0)

    def test_mc_acquisitions_see_duplicates_and_pending_points(self):
        from botorch.acquisition.logei import qLogExpectedImprovement
        from botorch.sampling import SobolQMCNormalSampler

        model, X, Y = _hartmann_model()
        best = Y.max()
        order = Y.view(-1).argsort(descending=True)
        x = X[order[0]].unsqueeze(0) + 0.03  # beside the incumbent: some improvement

        def acqf(pending=None):
            sampler = SobolQMCNormalSampler(torch.Size([4096]), seed=0)
            return qLogExpectedImprovement(model, best_f=best, sampler=sampler, X_pending=pending)

        # a second promising point away from x: the best of random points by LogEI
        R = torch.rand(256, 1, 6, dtype=DT, generator=torch.Generator().manual_seed(1))
        R = R[(R.squeeze(1) - x).norm(dim=-1) > 0.5]
        x2 = R[acqf()(R).argmax()]  # `1 x 6`

        one = float(acqf()(x.unsqueeze(0)))
        twice = float(acqf()(torch.cat([x, x]).unsqueeze(0)))
        self.assertAlmostEqual(twice, one, delta=0.02)  # a copy adds nothing
        self.assertGreater(float(acqf()(torch.cat([x, x2]).unsqueeze(0))), twice + 0.1)
        # with x pending, x itself gains nothing over the pending batch, x2 does
        on_pending = float(acqf(pending=x)(x.unsqueeze(0)))
        self.assertAlmostEqual(on_pending, one, delta=0.02)
        self.assertGreater(float(acqf(pending=x)(x2.unsqueeze(0))), on_pending + 0.1)
        # a q = 3 batch of distinct points
        bounds = torch.stack([torch.zeros(6, dtype=DT), torch.ones(6, dtype=DT)])
        with model.cache_training_context():
            cand, _ = optimize_acqf(acqf(), bounds, q=3, num_restarts=4, raw_samples=64)
        gaps = torch.pdist(cand)
        self.assertGreater(float(gaps.min()), 0.01)
