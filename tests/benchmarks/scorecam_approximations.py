"""Measurement (not a test): can a cheaper ScoreCAM stay faithful on the shipped members?

For N real BTXRD test-split cases and every member of a zoo, compares full (exact) ScoreCAM
with approximations that score fewer masked inputs: top-k by first-order (Taylor) estimate
with the rest estimated ("hybrid"), top-k only, and an oracle top-k by the true scores.
Prints median and worst Pearson per member, the spread of the channel scores and the softmax
mass of the top channels. Numbers quoted in the issue #5 note.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/scorecam_approximations.py THREADS [ZOO_DIR]

Needs ../shared/data/btxrd (via the cpu config's case table); ~3 min on 2 cores.
"""

import numpy as np, torch, sys
from scipy.stats import spearmanr
from model_zoo.ensemble import load_zoo
from model_zoo import explain as E, preprocess, imaging
from training.config import load_config
from training import fit as F


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    zoo = load_zoo(sys.argv[2] if len(sys.argv) > 2 else None)  # default: newest bundled zoo
    cfg = load_config("cpu")
    frame = F.load_cases(cfg, log=lambda *a: None)
    te = frame[frame["split"] == "test"].sample(8, random_state=0)
    for m in zoo.members:
        spec, model = m.spec, m.model
        rows = []
        for _, r in te.iterrows():
            px = imaging.load_image(r["image_path"]).pixels
            x, _, _ = preprocess.member_input(spec, px, F.row_box(r, px.shape[::-1]))
            x = E._check_input(spec, x)
            acts, logit = E._capture_activations(spec, model, x)
            C = acts.shape[1]
            allc = torch.arange(C)
            masks = E._masks(acts, allc, spec.input_size)
            scores, _ = E._channel_scores(spec, model, x, masks, 32)
            full = E._scale_to_input(E._score_weighted_cam(acts, allc, scores), spec.input_size)
            # Taylor proxy: one input-gradient
            xg = x.detach().clone().requires_grad_(True)
            with E.model_lock(model):
                lg = E._logits(model(xg), 1, spec)[0]
                (g,) = torch.autograd.grad(lg, xg)
            gx = (g * x).sum(1)[0]  # (S,S), channels summed (input is grey x3)
            taylor = float(lg) + ((masks - 1) * gx.detach()[None]).flatten(1).sum(1)
            w = torch.softmax(scores.double(), 0)
            srt = torch.sort(w, descending=True).values
            rec = {
                "spearman_taylor": float(spearmanr(taylor.numpy(), scores.numpy())[0]),
                "score_range": float(scores.max() - scores.min()),
                "mass_top16": float(srt[:16].sum()),
                "mass_top32": float(srt[:32].sum()),
                "mass_top64": float(srt[:64].sum()),
            }
            for k in (16, 32, 64):
                top = torch.topk(taylor, k).indices.sort().values
                hyb = taylor.clone()
                hyb[top] = scores[top]
                cam_h = E._scale_to_input(E._score_weighted_cam(acts, allc, hyb.float()), spec.input_size)
                cam_t = E._scale_to_input(E._score_weighted_cam(acts, top, scores[top]), spec.input_size)
                rec[f"hybrid{k}"] = E.agreement(full, cam_h)["pearson"]
                rec[f"toponly{k}"] = E.agreement(full, cam_t)["pearson"]
                oracle = torch.topk(scores, k).indices.sort().values
                rec[f"oracle{k}"] = E.agreement(
                    full, E._scale_to_input(E._score_weighted_cam(acts, oracle, scores[oracle]), spec.input_size)
                )["pearson"]
            rows.append(rec)
        med = {k: round(float(np.nanmedian([r[k] for r in rows])), 3) for k in rows[0]}
        mn = {k: round(float(np.nanmin([r[k] for r in rows])), 3) for k in rows[0]}
        print(spec.member_id, C, "median", med, "\n   min", mn, flush=True)


if __name__ == "__main__":
    main()
