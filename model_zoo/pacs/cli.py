"""``python -m model_zoo pacs check|predict``: the PACS from the command line (a tumour-board list).

Each study goes through the input gate (``model_zoo.gate``: a refused modality is an error;
age and site are taken from the header only where plausible / a bone region), the release's
out-of-distribution check (a flagged image gets no call and nothing is written back unless
``--allow-ood``; both outcomes are audited) and the ROI-jitter check, and its call is framed
by ``Zoo.call`` - the same words as the Case page, the PDF and the SR ("indeterminate" near
the threshold or when a jittered box flips the call).

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
from model_zoo.framing import JITTER_BOXES
from model_zoo.roi import ROI_MODES

ROI_CHOICES = tuple(m for m in ROI_MODES if m != "given")  # a PACS study has no given box


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pacs", help="search a PACS over DICOMweb, predict a study, write the result back")
    psub = p.add_subparsers(dest="pacs_command", required=True)
    psub.add_parser("check", help="check the [pacs] settings and that the server answers")
    q = psub.add_parser("predict", help="predict the first radiograph of each study (optionally write back)")
    q.add_argument("--study", action="append", required=True, metavar="UID", help="Study Instance UID (repeat for a list)")
    q.add_argument("--write", action="store_true", help="store the SR + PDF report in the same study (new series); idempotent")
    q.add_argument(
        "--zoo", type=Path, default=None, help="zoo release folder (default: $MODEL_ZOO_DIR or the newest bundled release)"
    )
    q.add_argument(
        "--roi",
        choices=ROI_CHOICES,
        default="auto",
        help="auto: the zoo's localiser (whole image where it has none); full: the whole image",
    )
    q.add_argument(
        "--site",
        choices=("appendicular", "axial"),
        default=None,
        help="lesion site for every study (default: from BodyPartExamined where it names a bone "
        "region, else not given and the stacker imputes it)",
    )
    q.add_argument(
        "--allow-ood",
        action="store_true",
        help="call and write back images the release's out-of-distribution check flags (logged in "
        "the audit); default: no call and nothing written for them",
    )
    q.add_argument(
        "--jitter",
        type=int,
        default=JITTER_BOXES,
        metavar="N",
        help=f"ROI-jitter boxes checked, as on the Case page (default {JITTER_BOXES}; 0: off): "
        "if any changes the call, the call is 'indeterminate'",
    )


def _settings() -> Any:
    from model_zoo.pacs.errors import PacsConfigError
    from model_zoo.pacs.settings import load_settings, read_secrets_files

    settings = load_settings(read_secrets_files())
    if settings is None:
        raise PacsConfigError(
            "no PACS configured: set [pacs] url in .streamlit/secrets.toml or MODEL_ZOO_PACS_URL (see the README, 'PACS')"
        )
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
        print(
            f"PACS OK: {settings.display_url} answered a QIDO-RS search in {seconds:.2f} s "
            f"(auth: {settings.auth_kind}, "
            + (f"TLS verify: {settings.verify})" if settings.url.lower().startswith("https") else "plain http)"),
            file=out,
        )
        return 0
    return _predict(args, client, out, err)


def _predict(args: argparse.Namespace, client: Any, out: TextIO, err: TextIO) -> int:
    from model_zoo.ensemble import load_zoo
    from model_zoo.pacs.errors import PacsError

    try:
        zoo = load_zoo(args.zoo)
    except ZooError as e:
        print(f"error: {e}", file=err)
        return 2
    n = len(args.study)
    failed = withheld = 0
    for i, study_uid in enumerate(args.study, start=1):
        tag = f"study {i}/{n}"
        try:
            called = _predict_study(args, client, zoo, study_uid, tag, out, err)
            withheld += not called
        except (PacsError, ZooError) as e:
            failed += 1
            print(f"{tag}: error: {e}", file=err)
    print(
        f"{n - failed}/{n} studies done"
        + (f"; {failed} failed" if failed else "")
        + (f"; {withheld} out of distribution: no call, not written back (--allow-ood to override)" if withheld else ""),
        file=err,
    )
    return 1 if failed else 0


def _audit(tag: str, event: dict[str, Any], err: TextIO) -> None:
    from model_zoo import audit

    try:
        audit.append_event(None, event)
    except OSError as e:
        print(f"{tag}: warning: the audit log could not be written ({e.strerror or type(e).__name__})", file=err)


def call_record(call: Any, jitter: Any) -> dict[str, Any]:
    """The call as the study's result record (audit JSON) keeps it: the word, the scale, the band,
    why it is indeterminate, and the ROI-jitter stability the Case page shows (``jitter`` None
    when the check was off: ``--jitter 0``)."""
    return {
        "word": call.word,
        "scale": call.scale,
        "p": call.p,
        "threshold": call.threshold,
        "band": call.band,
        "reasons": list(call.reasons),
        "jitter_flips": None if jitter is None else jitter.n_flips,  # kept for readers of older records
        "jitter": None
        if jitter is None
        else {
            "boxes": jitter.n,
            "flips": jitter.n_flips,
            "same_call": jitter.same_call,
            "p_min": jitter.p_min,
            "p_max": jitter.p_max,
            "p_sd": jitter.p_sd,
        },
    }


def _predict_study(args: argparse.Namespace, client: Any, zoo: Any, study_uid: str, tag: str, out: TextIO, err: TextIO) -> bool:
    """Gate, predict, frame and (with --write) write back one study; False when the OOD check
    withheld the call. Raises InputError for an image the input gate refuses (after auditing it)."""
    from model_zoo import audit, framing, gate
    from model_zoo import roi as roi_mod
    from model_zoo.errors import InputError
    from model_zoo.ood import OOD_MESSAGE
    from model_zoo.pacs.study import first_radiograph, open_instance, prepare_writeback, simple_case_pdf
    from model_zoo.pacs.writeback import write_back
    from model_zoo.predict import propose_roi

    instance, _ = first_radiograph(client, study_uid.strip())
    opened = open_instance(client, instance)
    meta = opened.image.meta
    zoo_id = {"image_sha256": opened.sha256, "zoo_name": zoo.release_name, "zoo_version": zoo.version}
    # The input gate the Case page and `predict` use: refused modality, implausible age, non-bone region.
    header = gate.check_header(meta)
    if header.refusal:
        _audit(tag, audit.gate_refusal_event(**zoo_id, reason=header.refusal, source="pacs-cli"), err)
        raise InputError(header.refusal)
    warnings = [*header.blocking, *header.warnings]
    pixels = opened.image.pixels
    h, w = pixels.shape
    if args.roi == "auto":
        box, source = propose_roi(zoo, pixels)
    else:
        box, source = roi_mod.full_image_box((w, h)), "full"
    # Age and site only where the header gives a plausible value (as the Case page pre-fills them).
    age, sex, site = header.age, meta.sex, args.site or header.site
    inputs: dict[str, Any] = {"age": age, "sex": sex, "site": site}
    pred = zoo.predict(pixels, box, **inputs)
    extra: dict[str, Any] = {"pacs": {"write": bool(args.write)}}
    flagged = bool(pred.ood)
    if pred.ood_score is not None and zoo.ood is not None:
        extra["ood"] = {"score": pred.ood_score, "threshold": float(zoo.ood.threshold), "flagged": flagged}
    for note in warnings:
        print(f"{tag}: warning: {note}", file=err)
    if flagged and not args.allow_ood:
        extra["pacs"]["write"] = False
        print(
            f"{tag}: {meta.modality or '?'} {w} x {h} px, ROI {source}; out of distribution: {OOD_MESSAGE} "
            f"(OOD score {pred.ood_score:.2f} > threshold {zoo.ood.threshold:.2f}); no call, not written back",
            file=out,
        )
        _audit(
            tag,
            audit.prediction_event(
                **zoo_id,
                roi_box=box,
                roi_source=source,
                age=age,
                sex=sex,
                site=site,
                p_ensemble=pred.p_ensemble,
                p_members=pred.p_members,
                p_clinic=pred.p_clinic,
                threshold=pred.threshold,
                label="",
                source="pacs-cli",
                extra={**extra, "call": None},
            ),
            err,
        )
        return False
    if flagged:
        _audit(
            tag,
            audit.ood_override_event(
                **zoo_id,
                roi_box=box,
                roi_source=source,
                ood_score=pred.ood_score,
                ood_threshold=float(zoo.ood.threshold),
                source="pacs-cli",
            ),
            err,
        )
        warnings.append(
            f"out of distribution: {OOD_MESSAGE} (OOD score {pred.ood_score:.2f} > threshold "
            f"{zoo.ood.threshold:.2f}); called anyway (--allow-ood)"
        )
        print(f"{tag}: warning: {warnings[-1]}", file=err)
    jitter = None
    if args.jitter > 0:  # the Case page's check: same boxes, same seed
        jitter = framing.jitter_summary(pred.p_ensemble, zoo.jitter_probs(pixels, box, **inputs, n=args.jitter), pred.threshold)
    call = zoo.call(pred.p_ensemble, jitter)  # framed once: the printed line, the record, the PDF and the SR
    raw = f" [raw {call.p_raw:.3f}, threshold {call.threshold_raw:.3f}]" if call.calibrated else ""
    print(f"{tag}: {meta.modality or '?'} {w} x {h} px, ROI {source}, site {site or 'not given'}; {call.sentence}{raw}", file=out)
    if jitter is not None:
        print(f"{tag}: {framing.jitter_sentence(jitter)}", file=out)
    extra["call"] = call_record(call, jitter)
    if args.write:
        pdf = simple_case_pdf(zoo, opened.image, box, source, inputs, pred, opened.sha256, call, jitter=jitter, warnings=warnings)
        objects, key = prepare_writeback(opened.header, zoo, pred, box=box, roi_source=source, inputs=inputs, pdf=pdf, call=call)
        result = write_back(client, objects, key=key)
        extra["pacs"].update(
            {"result_key": key, "written": list(result.written), "already_present": list(result.already_present)}
        )
        print(f"{tag}: {result.message}", file=out)
    _audit(
        tag,
        audit.prediction_event(
            **zoo_id,
            roi_box=box,
            roi_source=source,
            age=age,
            sex=sex,
            site=site,
            p_ensemble=pred.p_ensemble,
            p_members=pred.p_members,
            p_clinic=pred.p_clinic,
            threshold=pred.threshold,
            label=pred.label,
            source="pacs-cli",
            extra=extra,
        ),
        err,
    )
    return True
