"""Airflow DAG tests."""
