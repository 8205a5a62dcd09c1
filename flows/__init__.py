"""visionflows flows: Prefect orchestration only (which tasks, in what order, with what configs)."""
