"""Teaching / reader-study page: blind reads case by case, then truth, model and agreement."""

from __future__ import annotations

import streamlit as st

from dashboard import case_logic as cl
from dashboard import common
from dashboard import teaching_logic as tl
from model_zoo.errors import InputError


def _load_section(zoo) -> None:
    with st.expander("1. Load a case set", expanded="teach_cases" not in st.session_state):
        st.markdown(
            "A case table (CSV with `image` and `label`, optional `age`, `sex`, `site`, ROI columns) "
            "and a zip of its images. The model is run now; its answers stay hidden until you reveal them."
        )
        c1, c2 = st.columns(2)
        with c1:
            csv_up = st.file_uploader("Case table (CSV)", type=["csv"], key="teach_csv")
        with c2:
            zip_up = st.file_uploader("Images (zip)", type=["zip"], key="teach_zip")
        with_cams = st.checkbox(
            "Prepare GradCAM heatmaps with the annotator's box for the reveal (about 1 s per case)", value=True, key="teach_cams"
        )
        if st.button("Load case set", key="teach_load", disabled=csv_up is None) and csv_up is not None:
            bar = st.progress(0.0, text="Preparing cases ...")
            cases, skipped = tl.load_case_set(
                zoo,
                csv_up.getvalue(),
                zip_up.getvalue() if zip_up is not None else None,
                progress=lambda i, n: bar.progress(i / max(n, 1), text=f"Case {i} of {n}"),
                with_cams=with_cams,
            )
            bar.empty()
            if not cases:
                st.error("No usable case: every row failed or had no label. " + "; ".join(skipped[:5]))
                return
            st.session_state["teach_cases"] = cases
            st.session_state["teach_skipped"] = skipped
            st.session_state["teach_answers"] = {}
            st.session_state["teach_pending"] = {}
            st.session_state["teach_revealed"] = False
            st.session_state["teach_zoo"] = zoo.name
    if st.session_state.get("teach_skipped"):
        with st.expander(f"{len(st.session_state['teach_skipped'])} rows skipped"):
            st.write("\n".join(f"- {s}" for s in st.session_state["teach_skipped"]))


def _read_section(zoo, cases) -> None:
    answers: dict = st.session_state.setdefault("teach_answers", {})
    st.subheader("2. Read the cases (blind)")
    teaching = st.toggle(
        "Teaching mode: show the truth and the model's answer after each read",
        key="teach_mode",
        help="For learning, not for a reader study: your later reads are no longer blind to how the model behaves.",
    )
    name = st.text_input("Reader name", key="teach_reader", placeholder="e.g. reader1")
    if not name.strip():
        st.info("Enter your reader name to start. Each reader's answers are kept separately in this session.")
        return
    reader = tl.reader_key(name)
    mine = answers.setdefault(reader, {})
    pending: dict = st.session_state.setdefault("teach_pending", {})
    just_read = pending.pop(reader, None) if not teaching else pending.get(reader)
    if teaching and just_read in mine:
        _answer_after_read(zoo, cases, answers, reader, just_read)
        return
    todo = [c for c in cases if c.case_id not in mine]
    st.progress(len(mine) / len(cases), text=f"{reader}: {len(mine)} of {len(cases)} cases read")
    if not todo:
        st.success(f"{reader} has read every case. Another reader can enter a name, or reveal the results below.")
        return
    case = todo[0]
    c1, c2 = st.columns([3, 2])
    with c1:
        st.image(case.png, caption=f"Case {case.case_id} (ROI in red)", width="stretch")
    with c2:
        st.markdown(
            f"**Case {case.case_id}** - age: {tl.format_age(case.age)}, "
            f"sex: {case.sex or 'not given'}, site: {case.site or 'not given'}"
        )
        with st.form("teach_form", clear_on_submit=True):
            call = st.radio("Your read", (zoo.positive_class, zoo.negative_class), index=None, key="teach_call")
            conf = st.select_slider("Confidence (1 = guess, 5 = certain)", tl.CONFIDENCE_LEVELS, value=3, key="teach_conf")
            submitted = st.form_submit_button("Submit and next", type="primary")
        if submitted:
            if call is None:
                st.warning("Choose a read before submitting.")
            else:
                mine[case.case_id] = (int(call == zoo.positive_class), int(conf))
                pending[reader] = case.case_id
                st.rerun()


def _answer_after_read(zoo, cases, answers, reader: str, case_id: str) -> None:
    """Teaching mode: the case just read, revealed for this reader only, before the next one."""
    case = next(c for c in cases if c.case_id == case_id)
    _case_reveal(case, tl.case_reveal(case, answers, [reader], zoo))
    left = sum(1 for c in cases if c.case_id not in answers[reader])
    if st.button("Next case" if left else "Done", key="teach_next", type="primary"):
        st.session_state["teach_pending"].pop(reader, None)
        st.rerun()


def _answers_download(zoo, cases) -> None:
    """Every read of this session as CSV; the truth and the model join it only after the reveal
    (a download while others still read must not give the answers away)."""
    answers = st.session_state.get("teach_answers") or {}
    if not any(answers.values()):
        return
    revealed = bool(st.session_state.get("teach_revealed"))
    frame = tl.reads_frame(cases, answers, zoo, revealed=revealed)
    st.download_button(
        "Download all answers (CSV)",
        data=frame.to_csv(index=False).encode("utf-8"),
        file_name="reader-answers.csv",
        mime="text/csv",
        key="teach_download",
        on_click="ignore",
        help="With the truth, subtype and the model's answers once revealed."
        if revealed
        else "Reads and confidence only, until the reveal.",
    )


def _reveal_section(zoo, cases) -> None:
    answers = st.session_state.get("teach_answers") or {}
    done = tl.complete_readers(answers, cases)
    st.subheader("3. Reveal truth and model")
    if not done:
        st.caption("Available once at least one reader has read every case.")
        return
    if not st.session_state.get("teach_revealed"):
        st.caption(f"Complete readers: {', '.join(done)}. Revealing ends the blind reading for this case set.")
        if st.button("Reveal truth and model", key="teach_reveal"):
            st.session_state["teach_revealed"] = True
            st.rerun()
        return
    frame = tl.study_frame(cases, answers, done)
    metrics = tl.study_metrics(frame, zoo.threshold)
    st.markdown(
        f"**{len(cases)} cases, {len(done)} reader(s); model threshold {zoo.threshold:.2f}.** Proportions with Wilson 95 % CIs."
    )
    st.dataframe(tl.rater_table(metrics), hide_index=True, key="teach_metrics")
    st.markdown("\n".join(f"- {line}" for line in tl.agreement_lines(metrics)))
    shown = frame.assign(
        truth=[zoo.positive_class if y else zoo.negative_class for y in frame["label"]],
        subtype=[c.subtype or "" for c in cases],
        model=[tl.model_call(c, zoo).head.word for c in cases],
    )
    st.dataframe(shown, hide_index=True, key="teach_cases_table")
    st.download_button(
        "Download the study table (CSV)",
        data=frame.to_csv(index=False).encode("utf-8"),
        file_name="reader-study.csv",
        mime="text/csv",
        key="teach_study_download",
        on_click="ignore",
    )
    _roc_section(zoo, cases, answers, done)
    _case_by_case(zoo, cases, answers, done)


def _roc_section(zoo, cases, answers, readers: list[str]) -> None:
    """Each reader's ROC from the read + confidence ratings beside the model's."""
    st.markdown("**ROC: the model and each reader**")
    try:
        rocs = tl.rater_rocs([c.label for c in cases], [c.p_ensemble for c in cases], tl.reader_ratings(cases, answers, readers))
    except InputError as err:
        st.info(f"No ROC for this case set: {err}.")
        return
    st.dataframe(tl.roc_table(rocs), hide_index=True, key="teach_roc_table")
    st.plotly_chart(tl.roc_figure(rocs, f"ROC on {len(cases)} cases"), key="teach_roc_chart")
    st.caption(
        "A reader's read and confidence make one rating from 1 (certain "
        f"{zoo.negative_class}) to 10 (certain {zoo.positive_class}); the reader's ROC runs over those "
        "ratings, the model's over its probability. AUC with DeLong 95 % CIs; p from the paired DeLong "
        "test of each reader's AUC against the model's on the same cases."
    )


def _case_reveal(case, reveal) -> None:
    """One case revealed: the image, the heatmap with the annotator's box, truth, subtype, answers."""
    c1, c2 = st.columns(2)
    with c1:
        st.image(case.png, caption=f"Case {case.case_id} (ROI in red)", width="stretch")
    with c2:
        if case.cam_png:
            box = "with the annotator's box in white" if case.annotator_box else "(no annotator box in the table)"
            note = f" - {case.cam_note}" if case.cam_note else ""
            st.image(case.cam_png, caption=f"Ensemble-weighted GradCAM on the ROI {box}{note}", width="stretch")
        else:
            st.caption("No heatmap prepared for this case set (tick the heatmap option when loading it).")
    st.markdown(
        f"**Truth: {reveal.truth}** - subtype: {reveal.subtype}; age: {reveal.age}, "
        f"sex: {case.sex or 'not given'}, site: {case.site or 'not given'}."
    )
    st.markdown(f"Model: {reveal.model.head.sentence}")
    if reveal.model.head.scale_note:
        st.caption(reveal.model.head.scale_note)
    st.dataframe(tl.reveal_table(reveal), hide_index=True, key=f"teach_reveal_{case.case_id}")


def _case_by_case(zoo, cases, answers, readers: list[str]) -> None:
    """After the reveal: step through the cases, every rater's answer marked right or wrong."""
    st.markdown("**Case by case**")
    measured = cl.explain_sentence(zoo.explain_report, "roi")
    if measured:
        st.caption(measured)
    with st.expander("How to read a heatmap"):
        st.markdown(cl.HEATMAP_HOW_TO)
    pick = st.selectbox("Case", [c.case_id for c in cases], key="teach_case_pick")
    case = next(c for c in cases if c.case_id == pick)
    _case_reveal(case, tl.case_reveal(case, answers, readers, zoo))


def main() -> None:
    st.title("Teaching / reader study")
    common.disclaimer()
    zoo = common.get_zoo()
    if zoo is None:
        return
    _load_section(zoo)
    cases = st.session_state.get("teach_cases")
    if not cases:
        return
    if st.session_state.get("teach_zoo") != zoo.name:
        st.warning("These cases were scored with another zoo release; reload the case set.")
        return
    if not st.session_state.get("teach_revealed"):
        _read_section(zoo, cases)
    else:
        st.info("Results revealed: reading is closed for this case set (load it again for a new round).")
    _answers_download(zoo, cases)
    _reveal_section(zoo, cases)


common.guarded(main)()
