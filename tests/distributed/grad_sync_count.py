"""torchrun --nproc_per_node=2: with update_freq micro-batches, DDP all-reduces gradients in the
last backward only (nmt.training.parallel.sync_gradients), and the result equals all-reducing
the accumulated gradient once. Prints OK."""

import torch
import torch.distributed as dist
from torch import nn

from nmt.training.parallel import sync_gradients, wrap

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
ddp = wrap(model, "ddp", torch.device("cpu"))
calls = []


def counting_hook(state, bucket):
    calls.append(bucket.index())
    fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


ddp.register_comm_hook(None, counting_hook)
torch.manual_seed(100 + rank)
batches = [torch.randn(5, 8) for _ in range(3)]
for i, x in enumerate(batches):
    with sync_gradients(ddp, i == len(batches) - 1):
        ddp(x).pow(2).sum().backward()
n_buckets = len(set(calls))
assert len(calls) == n_buckets, f"{len(calls)} all-reduce calls for {n_buckets} bucket(s) over 3 micro-batches"

# Reference: the same accumulated local gradient, all-reduced by hand once.
ref = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
ref.load_state_dict(model.state_dict())
for x in batches:
    ref(x).pow(2).sum().backward()
for p in ref.parameters():
    dist.all_reduce(p.grad)
    p.grad /= dist.get_world_size()
for p, q in zip(model.parameters(), ref.parameters(), strict=True):
    assert torch.allclose(p.grad, q.grad, atol=1e-6), (p.grad - q.grad).abs().max()
dist.destroy_process_group()
print("OK")
