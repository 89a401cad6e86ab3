"""GroupViT on the shapes toy set in PyTorch (Hugging Face transformers' GroupViTModel), to
study why the toy runs stay near chance (docs/clip-seg.md, "What a PyTorch replica shows").

Not a dependency of any crate: a measuring tool, like bench_open_clip.py. It mirrors the
`groupvit` task's recipe (caption InfoNCE + multi-label loss with shared nouns as positives,
AdamW without decay below 2-D, warmup then cosine, random crops 0.8-1, gradient clip 1, logit
scale clamped) and NVlabs' hard zero-shot evaluation, and prints diagnostics: the spread of the
assignment logits against the Gumbel noise, an oracle mIoU (each group labelled with its pixels'
majority label), how many shape groups are named right, image-level naming.

    pip install torch transformers pillow numpy
    python xtask/groupvit_toy_replica.py --nouns circle,square,triangle
    python xtask/groupvit_toy_replica.py --labels-by color --nouns red,green,blue,yellow,purple,orange \
        --vision '{"depths":[0,1],"num_group_tokens":[4,0],"num_output_groups":[4,4]}' --scale 3.912
"""
import json, math, random, time, argparse
import numpy as np, torch, torch.nn.functional as F
from PIL import Image
from transformers import GroupViTConfig, GroupViTModel

p = argparse.ArgumentParser()
p.add_argument('--model', default='configs/models/groupvit-tiny-shapes.json')
p.add_argument('--data', default='datasets/shapes')
p.add_argument('--steps', type=int, default=300)
p.add_argument('--bs', type=int, default=32)
p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--wd', type=float, default=0.05)
p.add_argument('--mlw', type=float, default=1.0)
p.add_argument('--seed', type=int, default=0)
p.add_argument('--K', type=int, default=2)
p.add_argument('--nouns', default='background,circle,square,triangle')
p.add_argument('--vision', default='{}')
p.add_argument('--caption', default='full')  # full | nouns
p.add_argument('--topk', type=int, default=5)
p.add_argument('--noclip', action='store_true')
p.add_argument('--bgtext', action='store_true')
p.add_argument('--scale', type=float, default=None)
p.add_argument('--diag', action='store_true')
p.add_argument('--occupied', action='store_true')
p.add_argument('--labels-by', dest='labels_by', default='shape', choices=['shape', 'color'])
p.add_argument('--nogumbel', action='store_true')
args = p.parse_args()
import transformers.models.groupvit.modeling_groupvit as mg
STATS = []
EMPTY = [0, 0]
_orig_get_attn = mg.GroupViTAssignAttention.get_attn
def get_attn(self, attn, gumbel=True, hard=True):
    if gumbel and self.training:
        STATS.append(attn.detach().std(dim=-2).mean().item())
    if args.nogumbel:
        gumbel = False
    return _orig_get_attn(self, attn, gumbel, hard)
mg.GroupViTAssignAttention.get_attn = get_attn
torch.manual_seed(args.seed); random.seed(args.seed); np.random.seed(args.seed)
torch.set_num_threads(2)

cfg = json.load(open(args.model))
cfg['vision_config'].update(json.loads(args.vision))
if args.scale: cfg['logit_scale_init_value'] = args.scale
cfg['vision_config']['num_hidden_layers'] = max(1, sum(cfg['vision_config']['depths']))
config = GroupViTConfig(**{k: v for k, v in cfg.items() if k not in ('architectures',)})
model = GroupViTModel(config)
COLORS = {'red': [220, 40, 40], 'green': [40, 190, 60], 'blue': [40, 70, 230], 'yellow': [230, 210, 40], 'purple': [150, 60, 200], 'orange': [240, 140, 30]}
if args.labels_by == 'color':
    labels = ['background'] + list(COLORS)
else:
    labels = [l.strip() for l in open(f'{args.data}/labels.txt') if l.strip()]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073]); STD = np.array([0.26862954, 0.26130258, 0.27577711])

def load(split):
    rows = [l.rstrip('\n').split('\t') for l in open(f'{args.data}/{split}.tsv')][1:]
    ims = np.stack([(np.asarray(Image.open(f'{args.data}/{r[0]}').convert('RGB'), dtype=np.float32) / 255 - MEAN) / STD for r in rows])
    masks = np.stack([np.asarray(Image.open(f'{args.data}/{r[1]}')) for r in rows])
    if args.labels_by == 'color':
        # Each shape pixel labelled by its nearest named color (the generator adds +-10 noise).
        pal = np.array(list(COLORS.values()), dtype=np.float32)
        raw = np.stack([np.asarray(Image.open(f'{args.data}/{r[0]}').convert('RGB'), dtype=np.float32) for r in rows])
        nearest = ((raw[..., None, :] - pal) ** 2).sum(-1).argmin(-1) + 1
        masks = np.where(masks > 0, nearest, 0)
    return torch.tensor(ims, dtype=torch.float32).permute(0, 3, 1, 2), torch.tensor(masks).long(), [r[2] for r in rows]

tr_im, tr_mask, tr_cap = load('train'); va_im, va_mask, _ = load('val')
vocab = {}
def tok(s, ctx=77):
    words = s.lower().replace('.', ' .').replace(',', ' ,').split()
    ids = [49406] + [vocab.setdefault(w, len(vocab) + 1) for w in words] + [49407]
    ids = ids[:ctx] + [0] * (ctx - len(ids))
    return ids
templates = ["a photo of a {}.", "a {} shape.", "a drawing of a {}."]
noun_vocab = args.nouns.split(',')
def nouns_of(c):
    ws = c.lower().replace(',', ' ').split()
    return [n for n in noun_vocab if n in ws or n + 's' in ws]
def cap_text(c):
    return c if args.caption == 'full' else ' and '.join(nouns_of(c))

def text_embed(ids):
    ids = torch.tensor(ids)
    return model.text_projection(model.text_model(input_ids=ids, attention_mask=(ids != 0).long()).pooler_output)

params_decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
params_nodecay = [p for n, p in model.named_parameters() if p.ndim < 2]
opt = torch.optim.AdamW([{'params': params_decay, 'weight_decay': args.wd}, {'params': params_nodecay, 'weight_decay': 0}], lr=args.lr)
warm = 10
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm))))

def crop(x):
    B, C, H, W = x.shape
    out = []
    for i in range(B):
        s = random.uniform(0.8, 1.0); h = w = max(1, int(round(H * math.sqrt(s))))
        y0 = random.randint(0, H - h); x0 = random.randint(0, W - w)
        out.append(F.interpolate(x[i:i+1, :, y0:y0+h, x0:x0+w], size=(H, W), mode='bilinear', align_corners=False))
    return torch.cat(out)

def evaluate(topk=None):
    topk = topk or args.topk
    model.eval()
    with torch.no_grad():
        fg = labels if args.bgtext else labels[1:]
        offset = 0 if args.bgtext else 1  # label index of text label 0
        EMPTY[0] = EMPTY[1] = 0
        t = []
        for l in fg:
            e = F.normalize(text_embed([tok(tm.format(l)) for tm in templates]), dim=-1).mean(0)
            t.append(F.normalize(e, dim=-1))
        t = torch.stack(t)
        s = min(model.logit_scale.exp().item(), 100)
        inter = np.zeros(len(labels)); union = np.zeros(len(labels))
        vo = model.vision_model(pixel_values=va_im, output_attentions=True)
        lh = vo.last_hidden_state; groups = F.normalize(model.visual_projection(lh.reshape(-1, lh.shape[-1])).reshape(lh.shape[0], lh.shape[1], -1), dim=-1)
        avg = F.normalize(model.visual_projection(vo.pooler_output), dim=-1)
        prev = None
        for a in vo.attentions:
            a = a.permute(0, 2, 1)
            prev = a if prev is None else prev @ a
        B, N, G = prev.shape
        g = int(math.sqrt(N))
        m = prev.permute(0, 2, 1).reshape(B, G, g, g)
        H, W = va_mask.shape[1:]
        m = F.interpolate(m, size=(H, W), mode='bilinear', align_corners=False)
        gid = m.argmax(1)  # B,H,W
        purity = []
        oi = np.zeros(len(labels)); ou = np.zeros(len(labels)); named = [0, 0]
        img_top = 0
        for b in range(B):
            present = set(va_mask[b].unique().tolist())
            img_top += int((avg[b] @ t.T).argmax().item() + offset in present)
            aff = s * groups[b] @ t.T
            pre = aff.softmax(-1)
            top = (avg[b] @ t.T).topk(min(topk, len(fg))).indices
            mask = torch.full_like(aff, float('-inf')); mask[:, top] = 0
            aff2 = (aff + mask).softmax(-1) * pre
            scores = aff2[gid[b]]  # H,W,N
            occupied = torch.zeros(aff2.shape[0], dtype=torch.bool); occupied[gid[b].unique()] = True
            EMPTY[0] += int(not occupied[aff2.max(-1).values.argmax()].item()); EMPTY[1] += 1
            th = min(0.95, (aff2[occupied] if args.occupied else aff2).max().item())
            if b < 12 and topk == args.topk and args.diag:
                gbest = aff2.max(-1)
                sel = gbest.values.argmax().item()
                gt = va_mask[b]
                info = []
                for gg in range(aff2.shape[0]):
                    sm = gt[gid[b] == gg]
                    if sm.numel() == 0: continue
                    bc = torch.bincount(sm, minlength=len(labels))
                    info.append('g%d[n%d maj%d p%.2f] %s%.2f' % (gg, sm.numel(), bc.argmax().item(), bc.max().item() / sm.numel(), labels[1 + gbest.indices[gg].item()][:3], gbest.values[gg].item()))
                print('img', b, 'present', sorted(set(gt.unique().tolist())), 'sel', sel, ' | '.join(info))
            best, lab_ = scores.max(-1)
            pred = lab_ if args.bgtext else torch.where(best < th, torch.zeros_like(lab_), lab_ + 1)
            gt = va_mask[b]
            for c in range(len(labels)):
                inter[c] += ((pred == c) & (gt == c)).sum().item(); union[c] += ((pred == c) | (gt == c)).sum().item()
            # oracle: each group takes its majority gt label
            opred = torch.zeros_like(gt)
            for gg in gid[b].unique():
                sel = gt[gid[b] == gg]
                bc = torch.bincount(sel, minlength=len(labels))
                purity.append((bc.max().item(), sel.numel()))
                maj = bc.argmax().item(); opred[gid[b] == gg] = maj
                if maj > 0:
                    named[1] += 1; named[0] += int(aff2[gg].argmax().item() + offset == maj)
            for c in range(len(labels)):
                oi[c] += ((opred == c) & (gt == c)).sum().item(); ou[c] += ((opred == c) | (gt == c)).sum().item()
        iou = inter / np.maximum(union, 1)
        pur = sum(a for a, _ in purity) / sum(b for _, b in purity)
        print('image-level top1 in present %d/%d;' % (img_top, B), 'threshold set by a group owning no pixel: %d/%d' % tuple(EMPTY))
        tr_o = model.vision_model(pixel_values=tr_im[:64]); tavg = F.normalize(model.visual_projection(tr_o.pooler_output), dim=-1)
        print('train image-level top1', sum(int((tavg[b] @ t.T).argmax().item() + offset in set(tr_mask[b].unique().tolist())) for b in range(64)), '/64')
        print('oracle-named miou %.3f' % (oi / np.maximum(ou, 1)).mean(), np.round(oi / np.maximum(ou, 1), 3), 'shape groups named right %d/%d' % tuple(named))
    model.train()
    return iou.mean(), iou, pur

n = len(tr_cap)
t0 = time.time()
evaluate()
for step in range(args.steps):
    idx = random.sample(range(n), args.bs)
    x = crop(tr_im[idx])
    caps = [tr_cap[i] for i in idx]
    nn_ = [nouns_of(c) for c in caps]
    prompts = []; pnoun = []
    for i, ns in enumerate(nn_):
        for k in range(args.K):
            w = random.choice(ns)
            prompts.append(tok(random.choice(templates).format(w))); pnoun.append(w)
    img = F.normalize(model.visual_projection(model.vision_model(pixel_values=x).pooler_output), dim=-1)
    allt = text_embed([tok(cap_text(c)) for c in caps] + prompts)
    allt = F.normalize(allt, dim=-1)
    cap, pr = allt[:args.bs], allt[args.bs:]
    s = model.logit_scale.exp()
    logits = s * img @ cap.T
    lab = torch.arange(args.bs)
    l_clip = (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab)) / 2
    pos = torch.tensor([[1.0 if pnoun[j] in nn_[i] else 0.0 for j in range(len(prompts))] for i in range(args.bs)])
    ml = s * img @ pr.T
    l1 = -(pos / pos.sum(1, keepdim=True) * ml.log_softmax(1)).sum(1).mean()
    posT = pos.T
    l2 = -(posT / posT.sum(1, keepdim=True) * ml.T.log_softmax(1)).sum(1).mean()
    l_ml = (l1 + l2) / 2
    loss = (0 if args.noclip else l_clip) + args.mlw * l_ml
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); sched.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    if step % 50 == 0 or step == args.steps - 1:
        print(f'step {step} clip {l_clip.item():.3f} ml {l_ml.item():.3f} scale {s.item():.1f} rawstd {np.mean(STATS[-10:]):.3f} {time.time()-t0:.0f}s', flush=True)
miou, iou, pur = evaluate()
for k in [1, 2, 3]:
    print('topk', k, 'miou %.3f' % evaluate(k)[0])
print('FINAL miou %.3f' % miou, np.round(iou, 3), 'purity %.3f' % pur, flush=True)
