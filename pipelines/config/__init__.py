"""Configuration: the command line, `CXJ_*` variables and the config file (one precedence), the run's settings and Beam's options."""
