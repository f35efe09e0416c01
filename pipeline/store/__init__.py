"""Where bytes live, by concern: locations, configuration, retries, reads, atomic writes,
the input cache and locks. `pipeline.storage` gathers their public API in one namespace."""
