"""Everything that talks to Kafka: connection settings, offsets, reading ranges, the source-log check,
producing files and simulated events, the local broker."""
