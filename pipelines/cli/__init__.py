"""The `cxj` command line: one module per subcommand, plus the SQL prompt and its output formats."""
