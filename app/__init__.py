"""The DIABLO attention lab (Streamlit): `streamlit run app/main.py`."""
