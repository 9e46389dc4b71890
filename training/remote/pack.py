"""Pack a members-only run folder for a size-limited transfer. Fold jobs keep scores (no weights);
final jobs keep float16 weights (the release stores float16 anyway); the localiser with the
best val mean IoU is added. Small files first, big weights last, then split into chunks.
argv: RUN_DIR PACK_DIR LOCALISER_DIR..."""

import io
import json
import sys
import tarfile
from pathlib import Path

import torch

run, pack = Path(sys.argv[1]), Path(sys.argv[2])
pack.mkdir(parents=True, exist_ok=True)
entries = []  # (size, arcname, bytes)


def add_bytes(arc, data):
    entries.append((len(data), arc, data))


for f in sorted(run.glob("*.yaml")) + sorted(run.glob("jobs/*/*/log.csv")):
    add_bytes(f"run/{f.relative_to(run)}", f.read_bytes())
summary = {}
for res in sorted(run.glob("jobs/*/*/result.pt")):
    payload = torch.load(res, weights_only=False, map_location="cpu")
    final = res.parent.name == "final"
    if final:
        payload["state_dict"] = {
            k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in payload["state_dict"].items()
        }
    else:
        payload["state_dict"] = None
    buf = io.BytesIO()
    torch.save(payload, buf)
    add_bytes(f"run/{res.relative_to(run)}", buf.getvalue())
    summary[str(res.parent.relative_to(run))] = {
        "best_val_auc": payload["best_val_auc"],
        "best_epoch": payload["best_epoch"],
        "epochs_run": len(payload["history"]),
        "img_s": payload["images_per_second"],
    }
best = None
for d in map(Path, sys.argv[3:]):
    if (d / "localiser.json").is_file():
        m = json.loads((d / "localiser.json").read_text())["metrics"]
        val = (m.get("val") or {}).get("mean_iou") or 0.0
        summary[f"localiser {d.name}"] = {
            "val": m.get("val"),
            "test": m.get("test"),
            "epochs_run": m.get("epochs_run"),
            "best_epoch": m.get("best_epoch"),
        }
        if best is None or val > best[0]:
            best = (val, d)
if best:
    for f in ("localiser.json", "localiser.safetensors"):
        add_bytes(f"localiser/{f}", (best[1] / f).read_bytes())
    summary["localiser_chosen"] = best[1].name
add_bytes("summary.json", json.dumps(summary, indent=1).encode())
print(json.dumps(summary, indent=1))
entries.sort(key=lambda e: e[0])
with tarfile.open(pack / "run.tar", "w") as tar:
    for size, arc, data in entries:
        info = tarfile.TarInfo(arc)
        info.size = size
        tar.addfile(info, io.BytesIO(data))
print("tar bytes", (pack / "run.tar").stat().st_size)
