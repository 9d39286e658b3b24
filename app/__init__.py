"""Streamlit front end and the `clinseg` command line: orchestration and display only."""
