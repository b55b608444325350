"""The Quant Engine section of the Airflow UI; registered by ``plugins/qe_ui.py``."""
