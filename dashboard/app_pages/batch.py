"""Batch page: case CSV + zip of images -> predictions as `python -m model_zoo predict` writes them (README: Batch prediction)."""

from __future__ import annotations


import pandas as pd
import streamlit as st

from dashboard import batch_logic, common
from model_zoo import audit
from model_zoo.errors import InputError
from model_zoo.roi import ROI_MODES
from model_zoo.zoo import sha256_bytes

ROI_HELP = {
    "given": "the ROI columns of each row (rows without them use auto)",
    "auto": "the zoo's localiser (whole image if the zoo has none)",
    "full": "the whole image",
}


def main() -> None:
    st.title("Batch prediction")
    common.disclaimer()
    zoo = common.get_zoo()
    if zoo is None:
        return
    st.markdown(
        "Upload a **case table** (CSV: `image` column with paths relative to the zip's root, optional "
        "`label`, `age`, `sex`, `site`, `roi_x0..roi_y1`; a BTXRD `metadata.csv` works too) and a **zip of "
        "the images**. The zip is unpacked into a temporary folder that is deleted when the batch ends."
    )
    c1, c2 = st.columns(2)
    with c1:
        csv_up = st.file_uploader("Case table (CSV)", type=["csv"], key="batch_csv")
    with c2:
        zip_up = st.file_uploader("Images (zip)", type=["zip"], key="batch_zip")
    mode = st.radio("ROI", ROI_MODES, key="batch_roi_mode", horizontal=True, format_func=lambda m: f"{m}: {ROI_HELP[m]}")
    allow_flagged = st.checkbox(
        "Predict rows whose input looks wrong anyway",
        value=False,
        key="batch_allow_flagged",
        help="Off: a row with a tiny or featureless ROI, or whose DICOM header names a region that is not "
        "bone, limb or pelvis, fails with the reason (the Case page withholds these until you "
        "acknowledge them), and a row the release's out-of-distribution check flags ('ood' True) gets no "
        "prediction word. On: they are predicted and the reason is kept in the 'warning' column. "
        "DICOMs that are not radiographs (CT, MR, ...) are always refused.",
    )
    want_pdfs = st.checkbox(
        "Also make a PDF case report per case (zip, for a tumour board)",
        value=False,
        key="batch_pdfs",
        help="One PDF per successful row; adds about a second per case.",
    )
    pdf_names = want_pdfs and st.checkbox(
        "Name each PDF after its image and print the image name in it",
        value=False,
        key="batch_pdf_names",
        help="Off: each PDF is named and labelled by its case-table row only (image names often identify the patient).",
    )
    run = st.button("Run batch", key="batch_run", type="primary", disabled=csv_up is None)
    if run and csv_up is not None:
        bar = st.progress(0.0, text="Starting ...")

        def progress(i: int, n: int) -> None:
            bar.progress(i / max(n, 1), text=f"Case {i} of {n}")

        csv_bytes = csv_up.getvalue()
        try:
            result = batch_logic.run_batch(
                zoo,
                csv_bytes,
                zip_up.getvalue() if zip_up is not None else None,
                roi_mode=mode,
                progress=progress,
                with_reports=want_pdfs,
                csv_name=csv_up.name,
                block_flagged=not allow_flagged,
                report_image_names=bool(pdf_names),
                allow_ood=allow_flagged,
            )
        except InputError as err:  # the upload as a whole is unusable (no image column, unsafe zip, ...)
            bar.empty()
            st.session_state.pop("batch_result", None)
            st.error(common.plain_text(str(err)))
            return
        bar.progress(1.0, text=f"Done: {result.n_rows} cases")
        st.session_state["batch_result"] = result
        try:
            audit.append_event(
                None,
                {
                    "event": "batch_prediction",
                    "source": "dashboard",
                    "cases_sha256": sha256_bytes(csv_bytes),
                    "zoo": {"name": zoo.release_name, "version": zoo.version},
                    "roi_mode": mode,
                    "n_rows": result.n_rows,
                    "n_failed": result.n_failed,
                    "n_ood": result.n_ood,
                    "ood_allowed": bool(allow_flagged),
                },
            )
        except OSError as err:
            st.warning(f"The audit log could not be written ({err.strerror or err}).")
    result = st.session_state.get("batch_result")
    if result is None:
        return
    ok = result.n_rows - result.n_failed
    (st.success if result.n_failed == 0 else st.warning)(
        f"{ok} of {result.n_rows} cases predicted" + (f"; {result.n_failed} failed (listed below)." if result.n_failed else ".")
    )
    if result.n_ood:
        st.warning(
            f"{result.n_ood} row(s) do not look like the radiographs the model was trained on ('ood' "
            "column): no prediction word unless 'Predict rows whose input looks wrong anyway' was ticked."
        )
    show = [c for c in result.frame.columns if c not in ("error",)] + ["error"]
    st.dataframe(result.frame[show], hide_index=True, key="batch_table")
    st.download_button(
        "Download predictions (CSV)",
        data=result.csv_bytes(),
        file_name="predictions.csv",
        mime="text/csv",
        key="batch_download",
        on_click="ignore",
    )
    if result.pdf_zip:
        st.download_button(
            "Download PDF case reports (zip)",
            data=result.pdf_zip,
            file_name="case-reports.zip",
            mime="application/zip",
            key="batch_pdf_zip",
            on_click="ignore",
        )
    if result.n_failed:
        st.markdown("**Rows that failed**")
        st.dataframe(pd.DataFrame(result.failed), hide_index=True, key="batch_failed")


common.guarded(main)()
