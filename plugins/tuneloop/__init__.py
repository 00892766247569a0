"""tuneloop: continuous fine-tuning of production models, orchestrated by Airflow.

The top-level modules are the Airflow-free core (config, store, triggering, datasets, metrics, stats, gate,
registry, ...). hooks/, operators/, sensors/, triggers/ and plugin.py are the thin Airflow side.
"""

__version__ = "0.1.0"
