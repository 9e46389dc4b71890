"""``python -m model_zoo pacs check|predict``: the PACS from the command line (a tumour-board list).

Output and errors carry no identifier: studies are numbered in the order given ("study 2/5"),
never named by UID, patient or accession. Exit codes: 0 = every study done, 1 = some study
failed (its line says why), 2 = unusable settings/arguments or the PACS cannot be used at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from model_zoo.errors import ZooError
from model_zoo.roi import ROI_MODES

ROI_CHOICES = tuple(m for m in ROI_MODES if m != "given")  # a PACS study has no given box


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pacs", help="search a PACS over DICOMweb, predict a study, write the result back")
    psub = p.add_subparsers(dest="pacs_command", required=True)
    psub.add_parser("check", help="check the [pacs] settings and that the server answers")
    q = psub.add_parser("predict", help="predict the first radiograph of each study (optionally write back)")
    q.add_argument("--study", action="append", required=True, metavar="UID",
                   help="Study Instance UID (repeat for a list)")
    q.add_argument("--write", action="store_true",
                   help="store the SR + PDF report in the same study (new series); idempotent")
    q.add_argument("--zoo", type=Path, default=None,
                   help="zoo release folder (default: $MODEL_ZOO_DIR or the newest bundled release)")
    q.add_argument("--roi", choices=ROI_CHOICES, default="auto",
                   help="auto: the zoo's localiser (whole image where it has none); full: the whole image")
    q.add_argument("--site", choices=("appendicular", "axial"), default=None,
                   help="lesion site for every study (default: not given; the stacker imputes it)")


def _settings() -> Any:
    from model_zoo.pacs.errors import PacsConfigError
    from model_zoo.pacs.settings import load_settings, read_secrets_files

    settings = load_settings(read_secrets_files())
    if settings is None:
        raise PacsConfigError("no PACS configured: set [pacs] url in .streamlit/secrets.toml "
                              "or MODEL_ZOO_PACS_URL (see the README, 'PACS')")
    return settings


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    from model_zoo.pacs.client import PacsClient
    from model_zoo.pacs.errors import PacsError

    try:
        settings = _settings()
        client = PacsClient(settings)
        if settings.transport_warning:
            print(f"warning: {settings.transport_warning}", file=err)
        seconds = client.check()
    except PacsError as e:
        print(f"error: {e}", file=err)
        return 2
    if args.pacs_command == "check":
        print(f"PACS OK: {settings.display_url} answered a QIDO-RS search in {seconds:.2f} s "
              f"(auth: {settings.auth_kind}, "
              + (f"TLS verify: {settings.verify})" if settings.url.lower().startswith("https") else "plain http)"),
              file=out)
        return 0
    return _predict(args, client, out, err)


def _predict(args: argparse.Namespace, client: Any, out: TextIO, err: TextIO) -> int:
    from model_zoo import audit
    from model_zoo.ensemble import load_zoo
    from model_zoo.pacs.errors import PacsError
    from model_zoo.pacs.study import first_radiograph, open_instance, prepare_writeback, simple_case_pdf
    from model_zoo.pacs.writeback import write_back
    from model_zoo.predict import propose_roi
    from model_zoo import roi as roi_mod

    try:
        zoo = load_zoo(args.zoo)
    except ZooError as e:
        print(f"error: {e}", file=err)
        return 2
    n = len(args.study)
    failed = 0
    for i, study_uid in enumerate(args.study, start=1):
        tag = f"study {i}/{n}"
        try:
            instance, _ = first_radiograph(client, study_uid.strip())
            opened = open_instance(client, instance)
            pixels = opened.image.pixels
            h, w = pixels.shape
            if args.roi == "auto":
                box, source = propose_roi(zoo, pixels)
            else:
                box, source = roi_mod.full_image_box((w, h)), "full"
            meta = opened.image.meta
            inputs = {"age": meta.age, "sex": meta.sex, "site": args.site}
            pred = zoo.predict(pixels, box, **inputs)
            cal = f" (calibrated {pred.p_calibrated:.3f})" if pred.p_calibrated is not None else ""
            print(f"{tag}: {meta.modality or '?'} {w} x {h} px, ROI {source}; "
                  f"P({zoo.positive_class}) = {pred.p_ensemble:.3f}{cal}, threshold {pred.threshold:.3f} "
                  f"-> {pred.label}", file=out)
            extra: dict[str, Any] = {"pacs": {"write": bool(args.write)}}
            if args.write:
                pdf = simple_case_pdf(zoo, opened.image, box, source, inputs, pred, opened.sha256)
                objects, key = prepare_writeback(opened.header, zoo, pred, box=box, roi_source=source,
                                                 inputs=inputs, pdf=pdf)
                result = write_back(client, objects, key=key)
                extra["pacs"].update({"result_key": key, "written": list(result.written),
                                      "already_present": list(result.already_present)})
                print(f"{tag}: {result.message}", file=out)
            try:
                audit.append_event(None, audit.prediction_event(
                    image_sha256=opened.sha256, zoo_name=zoo.manifest["name"], zoo_version=zoo.manifest["version"],
                    roi_box=box, roi_source=source, age=inputs["age"], sex=inputs["sex"], site=inputs["site"],
                    p_ensemble=pred.p_ensemble, p_members=pred.p_members, p_clinic=pred.p_clinic,
                    threshold=pred.threshold, label=pred.label, source="pacs-cli", extra=extra))
            except OSError as e:
                print(f"{tag}: warning: the audit log could not be written ({e.strerror or type(e).__name__})", file=err)
        except (PacsError, ZooError) as e:
            failed += 1
            print(f"{tag}: error: {e}", file=err)
    print(f"{n - failed}/{n} studies done" + (f"; {failed} failed" if failed else ""), file=err)
    return 1 if failed else 0
