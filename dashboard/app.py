"""Dashboard entry point: ``streamlit run dashboard/app.py`` (from the repository root).

Multipage via ``st.navigation`` over ``dashboard/app_pages/``; the model zoo is loaded once
per process (``st.cache_resource`` in ``dashboard.common``) on the release named by
``$MODEL_ZOO_DIR``, else the newest release under ``assets/zoo``. Pages are thin: the work
is done by ``model_zoo`` (and, on the teaching page, ``training``'s statistics).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ (not the repository root) on sys.path.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import streamlit as st  # noqa: E402

from dashboard import common  # noqa: E402

PAGES = Path(__file__).resolve().parent / "app_pages"

st.set_page_config(page_title="Bone radiograph model zoo", page_icon=":bone:", layout="wide")

if not common.require_access():  # optional password / OIDC (README, Deployment)
    st.stop()

case_page = st.Page(PAGES / "case.py", title="Case", icon=":material/radiology:", url_path="case")


def _open_case() -> None:
    st.switch_page(case_page)


# Streamlit serves the default page at "/" only (its url_path is ignored), so a default Case
# page answered "/case" with "Page not found". The default is a hidden page that opens Case,
# so both "/" and a bookmarked "/case" work and the address bar always reads "/case".
pages = [
    st.Page(_open_case, title="Case", url_path="home", default=True, visibility="hidden"),
    case_page,
    st.Page(PAGES / "batch.py", title="Batch", icon=":material/table_view:", url_path="batch"),
    st.Page(PAGES / "teaching.py", title="Teaching / reader study", icon=":material/school:", url_path="teaching"),
    st.Page(PAGES / "zoo.py", title="Model zoo", icon=":material/inventory_2:", url_path="zoo"),
]
nav = st.navigation(pages)

with st.sidebar:
    release = common.chosen_release()
    st.markdown("**Model zoo**: " + (f"`{release.name}`" if release else "none installed"))
    st.caption("Research and teaching only; not a medical device.")

nav.run()
