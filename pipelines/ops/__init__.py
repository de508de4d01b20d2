"""What operators watch: status, Prometheus metrics, data-quality checks, logs, one-line failure causes, the HTML report."""
