"""Zoo page: available releases, model card, intended use, validation metrics, members, hashes."""

from __future__ import annotations

from pathlib import Path

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
    picked = st.selectbox("Release used in this session", labels, index=index, key="zoo_pick",
                          format_func=lambda s: Path(s).name)
    if picked != (str(current) if current else None):
        st.session_state[common.SESSION_ZOO_KEY] = picked
        st.rerun()


def main() -> None:
    st.title("Model zoo")
    common.disclaimer()
    _releases()
    zoo = common.get_zoo(show_missing=False)
    if zoo is None:
        return
    m = zoo.manifest
    st.success(f"**{zoo.name}** loaded; every file's sha256 matched the manifest.")
    st.markdown(f"**Task:** {zoo.positive_class} (positive) vs {zoo.negative_class}. "
                f"**Operating threshold:** {zoo.threshold:.3f} ({m.get('threshold', {}).get('rule', '?')} rule on the "
                f"{m.get('threshold', {}).get('chosen_on', '?')} split). **Created:** {m.get('created', '?')}.")
    st.info("**Intended use.** " + str(m.get("intended_use", "not stated")))

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
            split = st.radio("Split", splits, index=splits.index("val") if "val" in splits else 0,
                             horizontal=True, key="zoo_split")
            metrics = zoo_info.read_metrics(zoo.root, split)
            if metrics is None:
                st.warning(f"report/{split}/metrics.json could not be read.")
            else:
                st.markdown(f"**{split}**: n = {metrics.get('n')} cases. Proportions with Wilson 95 % CIs, "
                            "AUC with DeLong 95 % CIs, at each model's threshold.")
                st.dataframe(zoo_info.metrics_table(metrics), hide_index=True, key="zoo_metrics")
                st.plotly_chart(zoo_info.auc_figure(metrics, f"AUC on the {split} split (n = {metrics.get('n')})"),
                                key="zoo_auc_chart")
            data = _standalone_report(str(zoo.root), split)
            if data is not None:
                st.download_button(f"Download the full {split} report (HTML)", data=data,
                                   file_name=f"{zoo.manifest['name']}-{zoo.manifest['version']}-{split}-report.html",
                                   mime="text/html", key="zoo_report_download", on_click="ignore")
                if st.checkbox("Show the full report here (ROC, confusion, calibration plots)", key="zoo_embed"):
                    if len(data) > MAX_EMBED_BYTES:
                        st.caption("The report is too large to embed; download it instead.")
                    else:
                        import streamlit.components.v1 as components

                        components.html(data.decode("utf-8", errors="replace"), height=900, scrolling=True)
        comp = zoo_info.stacker_table(m)
        if not comp.empty:
            st.markdown(f"**Stacker comparison** (cross-validated AUC on out-of-fold member scores; "
                        f"chosen: {m.get('stacker', {}).get('chosen')})")
            st.dataframe(comp, hide_index=True, key="zoo_stackers")
    with tab_members:
        st.dataframe(zoo_info.members_table(m), hide_index=True, key="zoo_members")
        st.caption("Each member sees the ROI plus its margin, squared about the centre, resized to its input "
                   "size and normalised with its training-set mean/std (grey replicated to 3 channels).")
        weights = ", ".join(f"{k} {v:.2f}" for k, v in zoo.cam_weights.items())
        st.caption(f"Ensemble heatmap weights: {weights}.")
    with tab_files:
        st.dataframe(zoo_info.files_table(m), hide_index=True, key="zoo_files")
        st.caption(f"Release folder: {zoo.root}")


common.guarded(main)()
