"""The --mode commands of main.py that write files: each loads a run and uses its pipeline."""
