"""Zoo page: available releases, model card, intended use, validation metrics, members, hashes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import common, zoo_info


@st.cache_data(show_spinner=False, max_entries=8)
def _standalone_report(root: str, split: str) -> bytes | None:
    """The report with plotly inlined (~5 MB); releases are immutable, so once per process."""
    from model_zoo.zoo import standalone_report_html

    return standalone_report_html(Path(root), split)


# report.html embeds plotly's JS (several MB): shown on request only.
MAX_EMBED_BYTES = 12 * 1024 * 1024


def _releases() -> None:
    releases = common.available_releases()
    current = common.chosen_release()
    st.subheader("Releases")
    if not releases:
        common.no_zoo_message()
        return
    st.dataframe(pd.DataFrame([zoo_info.release_summary(p) for p in releases]), hide_index=True, key="zoo_releases")
    labels = [str(p) for p in releases]
    index = labels.index(str(current)) if current is not None and str(current) in labels else len(labels) - 1
    picked = st.selectbox("Release used in this session", labels, index=index, key="zoo_pick", format_func=lambda s: Path(s).name)
    if picked != (str(current) if current else None):
        st.session_state[common.SESSION_ZOO_KEY] = picked
        st.rerun()


def _unseen_hospital(evaluation: Mapping[str, Any] | None) -> None:
    """Internal test beside every external hospital; nothing for releases without evaluation."""
    rows = zoo_info.evaluation_rows(evaluation)
    if not rows:
        return
    st.subheader("At a hospital the model has not seen")
    sentence = zoo_info.unseen_hospital_sentence(evaluation)
    if sentence:
        st.markdown(f"**{sentence}**")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="zoo_unseen")
    st.caption(
        "AUC with DeLong 95 % CIs; sensitivity and specificity of the ensemble at the shipped "
        "threshold with Wilson 95 % CIs; ECE (expected calibration error, 10 bins) of the raw "
        "ensemble probability -> the calibrated one. External sets were never used for fitting, "
        "calibrating or choosing the threshold."
    )
    figures = [(name, zoo_info.reliability_figure(name, block)) for name, block in zoo_info.evaluation_blocks(evaluation)]
    figures = [(name, fig) for name, fig in figures if fig is not None]
    if figures:
        cols = st.columns(min(len(figures), 2))
        for i, (name, fig) in enumerate(figures):
            with cols[i % len(cols)]:
                st.plotly_chart(fig, key=f"zoo_reliability_{name}")
        st.caption(
            "Reliability: mean predicted probability against the observed fraction of positives "
            "per bin (marker size ~ cases in the bin); points on the diagonal are calibrated."
        )


def _plain_words(zoo: Any) -> None:
    """What the model does and how often it is wrong, in words, before any statistic (issue 17)."""
    summary = zoo_info.plain_summary(zoo.manifest.evaluation, zoo.positive_class, zoo.negative_class)
    if summary:
        st.subheader("In plain words")
        st.markdown(summary)


def main() -> None:
    st.title("Model zoo")
    common.disclaimer()
    plain = st.container()  # filled once the release has loaded, but shown first: words before statistics
    _releases()
    zoo = common.get_zoo(show_missing=False)
    if zoo is None:
        return
    m = zoo.manifest
    with plain:
        _plain_words(zoo)
    st.success(f"**{zoo.name}** loaded; every file's sha256 matched the manifest.")
    st.markdown(
        f"**Task:** {zoo.positive_class} (positive) vs {zoo.negative_class}. "
        f"**Operating threshold:** {zoo.threshold:.3f} ({zoo.threshold_rule or '?'} rule on the "
        f"{zoo.threshold_chosen_on or '?'} split). **Created:** {zoo.created or '?'}."
    )
    st.info("**Intended use.** " + (zoo.intended_use or "not stated"))
    _unseen_hospital(m.evaluation)

    tab_card, tab_metrics, tab_members, tab_files = st.tabs(["Model card", "Validation", "Members", "Files & hashes"])
    with tab_card:
        card = zoo.root / "MODEL_CARD.md"
        if card.is_file():
            st.markdown(card.read_text(encoding="utf-8"))
        else:
            st.caption("This release has no MODEL_CARD.md.")
    with tab_metrics:
        splits = zoo_info.report_splits(zoo.root, m)
        if not splits:
            st.caption("No stored evaluation report in this release.")
        else:
            split = st.radio("Split", splits, index=zoo_info.default_split(splits), horizontal=True, key="zoo_split")
            metrics = zoo_info.read_metrics(zoo.root, split)
            if metrics is None:
                st.warning(f"report/{split}/metrics.json could not be read.")
            else:
                st.markdown(
                    f"**{split}**: n = {metrics.get('n')} cases. Proportions with Wilson 95 % CIs, "
                    "AUC with DeLong 95 % CIs, at each model's threshold."
                )
                st.dataframe(zoo_info.metrics_table(metrics), hide_index=True, key="zoo_metrics")
                st.plotly_chart(
                    zoo_info.auc_figure(metrics, f"AUC on the {split} split (n = {metrics.get('n')})"), key="zoo_auc_chart"
                )
            data = _standalone_report(str(zoo.root), split)
            if data is not None:
                st.download_button(
                    f"Download the full {split} report (HTML)",
                    data=data,
                    file_name=f"{zoo.release_name}-{zoo.version}-{split}-report.html",
                    mime="text/html",
                    key="zoo_report_download",
                    on_click="ignore",
                )
                if st.checkbox("Show the full report here (ROC, confusion, calibration plots)", key="zoo_embed"):
                    if len(data) > MAX_EMBED_BYTES:
                        st.caption("The report is too large to embed; download it instead.")
                    else:  # the release's own report (trusted, hash-checked): scripts must run for plotly
                        st.iframe(data.decode("utf-8", errors="replace"), height=900)
        comp = zoo_info.stacker_table(m)
        if not comp.empty:
            st.markdown(f"**Stacker comparison** (cross-validated AUC on out-of-fold member scores; chosen: {zoo.stacker_name})")
            st.dataframe(comp, hide_index=True, key="zoo_stackers")
    with tab_members:
        st.dataframe(zoo_info.members_table(m), hide_index=True, key="zoo_members")
        st.caption(
            "Each member sees the ROI plus its margin, squared about the centre, resized to its input "
            "size and normalised with its mean/std (grey replicated to 3 channels). Start: the "
            "pretrained weights a member began from (name, package, licence) or scratch."
        )
        weights = ", ".join(f"{k} {v:.2f}" for k, v in zoo.cam_weights.items())
        st.caption(f"Ensemble heatmap weights: {weights}.")
    with tab_files:
        st.dataframe(zoo_info.files_table(m), hide_index=True, key="zoo_files")
        st.caption(f"Release folder: {zoo.root}")


common.guarded(main)()
