"""Probe (not a shipped recipe): does fine-tuning LiteMedSAM's mask decoder on usgra-seg beat the released weights?

    python benchmarks/probe_finetune_litemedsam.py --embeddings DIR [--seconds 480] [--lr 5e-5]

DIR holds the frames' embeddings as benchmarks/annotation/bench_prompted.py --embeddings keeps them. One block split: the
first half of the frames (sorted by name) trains the mask decoder (encoder and prompt encoder frozen; AdamW,
batches of 4 structures with boxes jittered 0-10 %, BCE + Dice on the 256x256 letterboxed mask) for a wall-clock
budget; the second half is scored with a box alone (seeded jitter), released weights first, then fine-tuned.
Nothing is saved. See benchmarks/annotation/prompted.md for the result and what a real recipe would still need.
"""
import argparse
import sys, time, numpy as np, torch, torch.nn.functional as F
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument('--embeddings', type=Path, required=True)
parser.add_argument('--data', type=Path, default=ROOT.parent / 'shared' / 'data' / 'usgra-seg')
parser.add_argument('--seconds', type=float, default=480)
parser.add_argument('--lr', type=float, default=5e-5)
parser.add_argument('--threads', type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads); torch.manual_seed(0)
from bench_prompted import read_pair, structures, jittered_box, dice
from NerveSegLogic.models import registry
from NerveSegLogic.models.litemedsam import prompt_points
from NerveSegLogic.imaging import placement as pp
data = args.data; emb = args.embeddings
names = sorted(p.name for p in (data/'images').glob('*.png'))
sha = registry.card('litemedsam').weights['sha256'][:12]
spec = registry.card('litemedsam').input
def load(names):
    out = []
    for n in names:
        img, ref = read_pair(data/'images', data/'masks', n)
        e = torch.from_numpy(np.load(emb/f"{Path(n).stem}-{sha}.npy").astype(np.float32))
        for label in (1, 2):
            for region in structures(ref, label, 50):
                out.append((e, region, img.shape, label))
    return out
half = len(names) // 2
train, test = load(names[:half]), load(names[half:])
print('structures train', len(train), 'test', len(test), flush=True)
model = registry.load('litemedsam')
def batch(items, rng):
    es, cs, ls, ts = [], [], [], []
    for e, region, shape, _ in items:
        h, w = shape; pl = pp.place(np.zeros(shape, np.uint8), spec)[1]; sx, sy = pl.scaled_w / w, pl.scaled_h / h
        b = jittered_box(region, rng, 0.1, shape)
        c, l = prompt_points((b[0]*sx, b[1]*sy, b[2]*sx, b[3]*sy))
        es.append(e); cs.append(c); ls.append(l)
        ts.append(torch.from_numpy(pp.place_mask(region.astype(np.uint8), spec).astype(np.float32)))
    return torch.stack(es), torch.tensor(cs), torch.tensor(ls, dtype=torch.float32), torch.stack(ts)[:, None]
def evaluate(items):
    rng = np.random.default_rng(123); ds = {1: [], 2: []}
    model.eval()
    with torch.no_grad():
        for it in items:
            e, c, l, _ = batch([it], rng)
            lo = model.decode(e, c, l)[0][:, :1]
            pl = pp.place(np.zeros(it[2], np.uint8), spec)[1]
            pred = pp.restore(lo[0].numpy(), pl, background_channel=False)[0] > 0
            ds[it[3]].append(dice(pred, it[1]))
    return {k: round(float(np.mean(v)), 4) for k, v in ds.items()}
print('released on test half', evaluate(test), flush=True)
for p in model.parameters(): p.requires_grad_(False)
for p in model.mask_decoder.parameters(): p.requires_grad_(True)
opt = torch.optim.AdamW(model.mask_decoder.parameters(), lr=args.lr, weight_decay=0.01)
rng = np.random.default_rng(0); start = time.time(); step = 0
while time.time() - start < args.seconds:
    model.train(); model.image_encoder.eval()
    idx = rng.choice(len(train), 4, replace=False)
    e, c, l, t = batch([train[i] for i in idx], rng)
    lo = model.decode(e, c, l)[0][:, :1]
    prob = torch.sigmoid(lo)
    loss = F.binary_cross_entropy_with_logits(lo, t) + (1 - (2 * (prob * t).sum((2, 3)) + 1) / (prob.sum((2, 3)) + t.sum((2, 3)) + 1)).mean()
    opt.zero_grad(); loss.backward(); opt.step(); step += 1
    if step % 50 == 0: print(step, round(loss.item(), 4), round(time.time() - start), flush=True)
print('steps', step, 'fine-tuned on test half', evaluate(test), flush=True)
