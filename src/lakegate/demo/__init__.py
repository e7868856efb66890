"""``lakegate demo``: a realistic nested orders stream with faults, ingested end to end."""
