"""Which CPU op and Python line launched the copy / reduce / fill kernels of one 130M training step."""
import collections, sys
import torch, torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, ".")
from core.models import MambaConfig, MambaLM
torch.manual_seed(0)
model = MambaLM(MambaConfig(d_model=768, n_layer=24, vocab_size=50277)).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, 50277, (16, 2049), device="cuda")
def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(ids[:, :-1]).float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
    opt.step()
for _ in range(2):
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True, with_stack=True) as prof:
    step(); torch.cuda.synchronize()
WANT = ("copy", "reduce_kernel", "Fill", "CUDAFunctor_add", "elementwise")
agg = collections.defaultdict(lambda: [0.0, 0])
for e in prof.events():
    if e.device_type == torch.autograd.DeviceType.CPU and e.kernels:
        for k in e.kernels:
            if any(w in k.name for w in WANT):
                stack = [s for s in (e.stack or []) if ("core/" in s or "benchmarks" in s or "_probe" in s)][:2]
                key = (e.name, str(e.input_shapes)[:70], k.name[:60], " < ".join(stack)[:160])
                agg[key][0] += k.duration / 1000
                agg[key][1] += 1
rows = sorted(agg.items(), key=lambda kv: -kv[1][0])
tot = sum(v[0] for _, v in rows)
print(f"total {tot:.2f} ms")
for key, (ms, n) in rows[:45]:
    print(f"{ms:7.2f} ms {n:4d}x  {key[0]} {key[1]} | {key[2]} | {key[3]}")
