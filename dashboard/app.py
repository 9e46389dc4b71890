"""Dashboard entry point (placeholder until the dashboard issue lands)."""

import streamlit as st

st.set_page_config(page_title="Bone radiograph model zoo", layout="wide")
st.title("Bone radiograph model zoo")
st.info("Research and teaching tool; not a medical device. The case view is under construction.")
