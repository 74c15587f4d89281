"""Integration jobs and scripts around ogkernels (run as python -m integration.<name>)."""
