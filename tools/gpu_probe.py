"""Probe: kernel launches and time of one cached LogEI value+grad on CUDA (n=100, m=32),
eager and replayed from a CUDA graph."""
import os, sys, time
sys.path.insert(0, os.getcwd())
import torch
from botorch.test_functions import Hartmann
from torch.quasirandom import SobolEngine
from botorch_community.acquisition.cuda_graph import CUDAGraphAcquisitionFunction
from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement
from botorch_community.models.prior_fitted_network import PFNModel
from botorch_community.pfn import default_network
from torch.profiler import profile, ProfilerActivity
dev = torch.device("cuda")
tkw = dict(dtype=torch.float64, device=dev)
net = default_network(dev)
f = Hartmann(dim=6, negate=True).to(**tkw)
X = SobolEngine(6, scramble=True, seed=1).draw(100).to(**tkw)
Y = f(X).unsqueeze(-1)
pfn = PFNModel(X, Y, model=net)
acq = DiscretizedLogExpectedImprovement(pfn, best_f=Y.max())
wrapped = CUDAGraphAcquisitionFunction(acq)
Xq = torch.rand(32, 1, 6, **tkw)
with pfn.cache_training_context():
    for name, a in (("eager", acq), ("graphs", wrapped)):
        for _ in range(5):
            x = Xq.clone().requires_grad_(True); a(x).sum().backward()
        torch.cuda.synchronize()
        ts = []
        for _ in range(50):
            t0 = time.perf_counter()
            x = Xq.clone().requires_grad_(True); a(x).sum().backward(); torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        ts.sort()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            x = Xq.clone().requires_grad_(True); a(x).sum().backward(); torch.cuda.synchronize()
        ev = prof.key_averages()
        n_k = sum(e.count for e in ev if e.device_type == torch.autograd.DeviceType.CUDA)
        syncs = {e.key: e.count for e in ev if e.key in ("aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero")}
        print(f"{name}: median {ts[25]*1e3:.2f} ms, min {ts[0]*1e3:.2f} ms; CUDA kernels {n_k}; syncs {syncs}")
    print("captures", wrapped.num_captures, "replays", wrapped.num_replays)
    torch.cuda.set_sync_debug_mode("warn")
    x = Xq.clone().requires_grad_(True); acq(x).sum().backward()
    torch.cuda.set_sync_debug_mode(0)
