"""`python -m pipelines.cli ...` is `cxj ...` (tests and Beam workers use it without the script)."""
from pipelines.cli.main import entry

entry()
